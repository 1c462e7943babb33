// Command inference-client-go is the smallest Go client of inference.v1.InferenceService, built
// on the stubs that `make clients` generates into build/gen/go (protoc-gen-go, protoc-gen-go-grpc).
// It invokes one image, reads the invocation back, reads an id that does not exist, lists the
// invocations of its metadata following every page, deletes the invocation (then reads, lists
// and deletes it again), and prints what it saw as one JSON object.
// tests/e2e/test_client_stubs.py runs it against the stack.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	inferencev1 "github.com/inference-service/api/gen/go/inference/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const messageLimit = 64 << 20

func main() {
	target := flag.String("target", "127.0.0.1:8080", "host:port of Envoy (native gRPC)")
	image := flag.String("image", "", "image file to invoke")
	id := flag.String("id", "", "input id")
	flag.Parse()
	if err := run(*target, *image, *id); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(target, image, id string) error {
	content, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(messageLimit), grpc.MaxCallSendMsgSize(messageLimit)))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := inferencev1.NewInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	invoked, err := client.Invoke(ctx, &inferencev1.InvokeRequest{
		Input: &inferencev1.ModelInput{Id: id, Content: content, Metadata: map[string]string{"client": "go"}},
	})
	if err != nil {
		return fmt.Errorf("Invoke: %w", err)
	}
	got, err := client.GetInvocation(ctx, &inferencev1.GetInvocationRequest{
		Id: id, View: inferencev1.InvocationView_INVOCATION_VIEW_BASIC,
	})
	if err != nil {
		return fmt.Errorf("GetInvocation: %w", err)
	}
	_, missingErr := client.GetInvocation(ctx, &inferencev1.GetInvocationRequest{Id: id + "-missing"})

	filter := `metadata.client = "go"`
	listed, pages, err := listAll(ctx, client, filter, 1)
	if err != nil {
		return fmt.Errorf("ListInvocations: %w", err)
	}
	if _, err := client.DeleteInvocation(ctx, &inferencev1.DeleteInvocationRequest{Id: id}); err != nil {
		return fmt.Errorf("DeleteInvocation: %w", err)
	}
	_, getDeletedErr := client.GetInvocation(ctx, &inferencev1.GetInvocationRequest{Id: id})
	listedAfter, _, err := listAll(ctx, client, filter, 0)
	if err != nil {
		return fmt.Errorf("ListInvocations after the delete: %w", err)
	}
	_, deleteAgainErr := client.DeleteInvocation(ctx, &inferencev1.DeleteInvocationRequest{Id: id})
	_, allowMissingErr := client.DeleteInvocation(ctx,
		&inferencev1.DeleteInvocationRequest{Id: id, AllowMissing: true})

	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"invoke_state":        invoked.GetInvocation().GetState().String(),
		"invoke_faces":        len(invoked.GetInvocation().GetOutput().GetDetections()),
		"get_id":              got.GetInvocation().GetId(),
		"get_state":           got.GetInvocation().GetState().String(),
		"get_faces":           len(got.GetInvocation().GetOutput().GetDetections()),
		"get_content":         len(got.GetInvocation().GetInput().GetContent()),
		"get_metadata":        got.GetInvocation().GetInput().GetMetadata(),
		"content_sha256":      got.GetInvocation().GetContentSha256(),
		"missing_code":        status.Code(missingErr).String(),
		"listed":              count(listed, id),
		"list_ids":            len(listed),
		"list_pages":          pages,
		"get_deleted_code":    status.Code(getDeletedErr).String(),
		"listed_after_delete": count(listedAfter, id),
		"delete_again_code":   status.Code(deleteAgainErr).String(),
		"allow_missing_code":  status.Code(allowMissingErr).String(),
	})
}

// listAll follows next_page_token until it is empty and returns the ids listed, and the
// number of pages.
func listAll(ctx context.Context, client inferencev1.InferenceServiceClient, filter string,
	pageSize int32) ([]string, int, error) {
	var ids []string
	token := ""
	for pages := 1; ; pages++ {
		page, err := client.ListInvocations(ctx, &inferencev1.ListInvocationsRequest{
			Filter: filter, PageSize: pageSize, PageToken: token,
		})
		if err != nil {
			return nil, pages, err
		}
		for _, invocation := range page.GetInvocations() {
			ids = append(ids, invocation.GetId())
		}
		token = page.GetNextPageToken()
		if token == "" {
			return ids, pages, nil
		}
	}
}

func count(ids []string, id string) int {
	n := 0
	for _, listed := range ids {
		if listed == id {
			n++
		}
	}
	return n
}
