// The Postman collection of the REST API, made from the committed OpenAPI file by
// openapi-to-postmanv2 (npm), then fixed for use (`make postman`):
//   node tools/postman-collection.mjs [SPEC] [OUT]
//
// What the converter alone gets wrong, and what this script does about it:
// - The `:id` path variables get a value faked from the id pattern, the Invoke body another one
//   (and `content: "<string>"`: 400), so Invoke and the reads name different invocations, and
//   setting the collection variable `id` changes only the render: every `:id` is `{{id}}` here,
//   the Invoke body's `input.id` too, and the body is the spec's example.
// - Optional query parameters are enabled with placeholders (`max_dimension=<integer>`,
//   `allow_missing=<boolean>`: 400): they are disabled here.
// - `{id}:render` is not a path variable of its own in Postman (`:id:render` would be read as a
//   variable named `id:render`): its URL is written as `{{baseUrl}}/v1/invocations/{{id}}:render`
//   with no path variables.
// - `baseUrl` is "/" (the file names no host): it is the `make run` stack's, 127.0.0.1:8080.
// - Requests are named by their long summaries and sit in folders by path: here they are named
//   by the RPC (Invoke, GetInvocation, ...) in one list, in the order of a session (Invoke,
//   read, render, list, models, and DeleteInvocation last), the summaries kept as descriptions.
// - The raw upload's body is the image file itself (Body, binary): `face.jpg` beside the
//   collection (newman: `--working-dir`; in Postman, pick a file), with `id` = `{{id}}-upload`.
// - Random ids of the collection, items and responses are dropped (Postman makes its own on
//   import), so that the output is the same each time.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Converter from "openapi-to-postmanv2";

const SPEC = process.argv[2] ?? "api/openapi/inference/v1/inference_service.swagger.json";
const OUT = process.argv[3] ?? "build/postman/inference-service.postman_collection.json";
const BASE_URL = "http://127.0.0.1:8080";
const ORDER = [
  "Invoke",
  "UploadInvocation",
  "GetInvocation",
  "RenderInvocation",
  "ListInvocations",
  "ListModels",
  "GetModel",
];
const LAST = ["DeleteInvocation"];
// Path variables and the collection variables they take.
const PATH_VARIABLES = { id: "id", name: "model" };

const spec = JSON.parse(readFileSync(SPEC, "utf8"));
const invokeExample = spec.definitions.v1InvokeRequest.example;
// Each operation's summary becomes its RPC's name (the converter names requests by summary);
// the summary goes before the description.
for (const operations of Object.values(spec.paths)) {
  for (const operation of Object.values(operations)) {
    const rpc = operation.operationId.replace(/^InferenceService_/, "");
    operation.description = [operation.summary, operation.description].filter(Boolean).join("\n\n");
    operation.summary = rpc;
  }
}

const options = {
  parametersResolution: "Example",
  enableOptionalParameters: false,
  folderStrategy: "Paths",
  collapseFolders: false,
  requestNameSource: "Fallback",
};

const result = await new Promise((resolve, reject) =>
  Converter.convert({ type: "json", data: spec }, options, (error, converted) =>
    error ? reject(error) : resolve(converted),
  ),
);
if (!result.result) {
  throw new Error(`conversion failed: ${result.reason}`);
}
const collection = result.output[0].data;

function requests(items) {
  return items.flatMap((item) => (item.item ? requests(item.item) : [item]));
}

function dropIds(value) {
  if (Array.isArray(value)) return value.map(dropIds);
  if (value && typeof value === "object") {
    const copy = {};
    for (const [key, inner] of Object.entries(value)) {
      if (key !== "id" || typeof inner !== "string" || !/^[0-9a-f-]{36}$/.test(inner)) {
        copy[key] = dropIds(inner);
      }
    }
    return copy;
  }
  return value;
}

function fixUrl(url) {
  for (const variable of url.variable ?? []) {
    if (PATH_VARIABLES[variable.key]) variable.value = `{{${PATH_VARIABLES[variable.key]}}}`;
  }
  const path = url.path ?? [];
  const render = path.findIndex((segment) => /^(\{\{id\}\}|:id|\{id\}):render$/.test(segment));
  if (render >= 0) {
    url.path = [...path.slice(0, render), "{{id}}:render", ...path.slice(render + 1)];
    url.variable = (url.variable ?? []).filter((variable) => variable.key !== "id");
  }
  url.raw = undefined; // the parts (host, path, query) say it
  return url;
}

const items = requests(collection.item).map((item) => {
  fixUrl(item.request.url);
  for (const response of item.response ?? []) fixUrl(response.originalRequest.url);
  if (item.name === "Invoke") {
    const body = structuredClone(invokeExample);
    body.input.id = "{{id}}";
    item.request.body.raw = JSON.stringify(body, null, 2);
  }
  if (item.name === "UploadInvocation") {
    item.request.body = { mode: "file", file: { src: "face.jpg" } };
    // One `metadata=key:value` entry (the converter repeats an array parameter).
    const query = (item.request.url.query ?? []).filter(
      (param, index, all) =>
        param.key !== "metadata" || all.findIndex((p) => p.key === "metadata") === index,
    );
    for (const param of query) {
      if (param.key === "id") Object.assign(param, { value: "{{id}}-upload", disabled: false });
      if (param.key === "metadata") Object.assign(param, { value: "camera:lobby", disabled: false });
    }
    item.request.url.query = query;
    const header = (item.request.header ?? []).filter((h) => h.key.toLowerCase() !== "content-type");
    item.request.header = [...header, { key: "Content-Type", value: "image/jpeg" }];
  }
  return dropIds(item);
});
const rank = (name) =>
  LAST.includes(name)
    ? 1000 + LAST.indexOf(name)
    : ORDER.includes(name)
      ? ORDER.indexOf(name)
      : ORDER.length;
items.sort((a, b) => rank(a.name) - rank(b.name));

const unique = new Set(items.map((item) => item.name));
if (unique.size !== items.length) throw new Error("two requests with one name");
for (const name of [...ORDER, ...LAST]) {
  if (!unique.has(name)) throw new Error(`no request ${name} in the collection`);
}

const output = dropIds({
  info: {
    schema: collection.info.schema,
    name: "Inference Service",
    description:
      "Made by `make postman` from api/openapi/inference/v1/inference_service.swagger.json. " +
      "Collection variables: baseUrl (Envoy's REST address), id (the invocation the requests " +
      "work on), model (for GetModel). Run in order: Invoke, read, render, list, DeleteInvocation " +
      "last. With a JWT-secured stack, set the collection's Authorization to Bearer Token.\n\n" +
      (spec.info.description ?? ""),
  },
  item: items,
  variable: [
    { key: "baseUrl", value: BASE_URL, type: "string" },
    { key: "id", value: invokeExample.input.id, type: "string" },
    { key: "model", value: invokeExample.model, type: "string" },
  ],
});
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, `${JSON.stringify(output, null, 2)}\n`);
console.log(`${OUT}: ${items.map((item) => item.name).join(", ")}`);
