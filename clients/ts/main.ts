// The smallest TypeScript client of inference.v1.InferenceService, on the stubs that
// `make clients` generates into build/gen/ts (protoc-gen-es) and @connectrpc/connect-node's gRPC
// transport. It invokes one image, reads the invocation back, reads an id that does not exist,
// lists the invocations of its metadata following every page, deletes the invocation (then reads,
// lists and deletes it again), and prints what it saw as one JSON object.
// tests/e2e/test_client_stubs.py runs it.
//
//   node build/clients/ts/clients/ts/main.js HOST:PORT IMAGE ID
import { readFileSync } from "node:fs";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  InferenceService,
  Invocation_State,
  InvocationView,
} from "../../build/gen/ts/inference/v1/inference_service_pb.js";

const [target, image, id] = process.argv.slice(2);
if (!target || !image || !id) {
  console.error("usage: main.js HOST:PORT IMAGE ID");
  process.exit(2);
}

const messageLimit = 64 * 1024 * 1024;
const transport = createGrpcTransport({
  baseUrl: `http://${target}`,
  readMaxBytes: messageLimit,
  writeMaxBytes: messageLimit,
});
const client = createClient(InferenceService, transport);
const options = { timeoutMs: 60_000 };

const invoked = await client.invoke(
  { input: { id, content: readFileSync(image), metadata: { client: "ts" } } },
  options,
);
const got = await client.getInvocation({ id, view: InvocationView.BASIC }, options);

// The status code's name ("OK" when the call succeeds).
async function codeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "OK";
  } catch (error) {
    return Code[ConnectError.from(error).code];
  }
}

// Follows nextPageToken until it is empty: the ids listed, and the number of pages.
async function listAll(filter: string, pageSize: number): Promise<[string[], number]> {
  const ids: string[] = [];
  let pageToken = "";
  for (let pages = 1; ; pages++) {
    const page = await client.listInvocations({ filter, pageSize, pageToken }, options);
    ids.push(...page.invocations.map((invocation) => invocation.id));
    pageToken = page.nextPageToken;
    if (!pageToken) {
      return [ids, pages];
    }
  }
}

const count = (ids: string[]) => ids.filter((listed) => listed === id).length;

const missingCode = await codeOf(client.getInvocation({ id: `${id}-missing` }, options));
const filter = 'metadata.client = "ts"';
const [listed, pages] = await listAll(filter, 1);
await client.deleteInvocation({ id }, options);
const getDeletedCode = await codeOf(client.getInvocation({ id }, options));
const [listedAfter] = await listAll(filter, 0);
const deleteAgainCode = await codeOf(client.deleteInvocation({ id }, options));
const allowMissingCode = await codeOf(
  client.deleteInvocation({ id, allowMissing: true }, options),
);

console.log(
  JSON.stringify({
    invoke_state: Invocation_State[invoked.invocation?.state ?? Invocation_State.UNSPECIFIED],
    invoke_faces: invoked.invocation?.output?.detections.length ?? 0,
    get_id: got.invocation?.id,
    get_state: Invocation_State[got.invocation?.state ?? Invocation_State.UNSPECIFIED],
    get_faces: got.invocation?.output?.detections.length ?? 0,
    get_content: got.invocation?.input?.content.length ?? -1,
    get_metadata: got.invocation?.input?.metadata ?? {},
    content_sha256: got.invocation?.contentSha256,
    missing_code: missingCode,
    listed: count(listed),
    list_ids: listed.length,
    list_pages: pages,
    get_deleted_code: getDeletedCode,
    listed_after_delete: count(listedAfter),
    delete_again_code: deleteAgainCode,
    allow_missing_code: allowMissingCode,
  }),
);
