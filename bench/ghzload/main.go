// Command bench-ghz is the benchmark's gRPC load generator: ghz's runner (github.com/bojand/ghz,
// used as a library) driving one unary method at a fixed concurrency for a fixed time, closed
// loop, with pre-serialized request messages sent round-robin (or for a fixed number of requests,
// -n: with as many as there are messages, each is sent exactly once, e.g. one delete per id).
//
// It exists instead of the ghz command line to keep the client's CPU off the server's cores
// (2 here) with large (100-500 KB) requests:
//   - a unique id per request at no cost: with -unique-id-field, a request is a base message
//     followed by a tiny encoded message that sets only that field (protobuf merges repeated
//     occurrences of an embedded message), so the image bytes are never re-encoded or templated
//     (ghz's --data templating parses and encodes the whole base64 JSON body on every call);
//   - requests go out as the pre-serialized bytes (a codec that passes them through) and
//     responses are not decoded, only received: ghz's dynamic messages cost about 1 ms of CPU
//     per 150 KB call in marshalling and garbage collection.
//
// The status of every call is still checked; latency is to the end of the response.
//
// With -rate it runs open loop instead (openloop.go): a fixed schedule of requests, native gRPC
// or HTTP/1.1 GETs, latency measured from each request's due time (no coordinated omission).
//
// Output (to -out, JSON): request counts, status codes, a few error messages, the run time and
// the latency of every successful call in microseconds, for bench/run.py to merge and summarize.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bojand/ghz/runner"
	"github.com/jhump/protoreflect/desc"
	"github.com/jhump/protoreflect/dynamic"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// rawCodec sends the bytes registered for a request message (a per-call placeholder) as they
// are, and does not decode responses. Named "proto" so the content-type stays application/grpc.
type rawCodec struct {
	pending sync.Map // *dynamic.Message -> []byte
}

func (c *rawCodec) Marshal(v any) ([]byte, error) {
	if body, ok := c.pending.LoadAndDelete(v); ok {
		return body.([]byte), nil
	}
	return nil, fmt.Errorf("no request bytes registered for %T", v)
}

func (c *rawCodec) Unmarshal([]byte, any) error { return nil }

func (c *rawCodec) Name() string { return "proto" }

type result struct {
	Target       string         `json:"target"`
	Call         string         `json:"call"`
	Concurrency  uint           `json:"concurrency"`
	Connections  uint           `json:"connections"`
	Count        uint64         `json:"count"`
	OK           uint64         `json:"ok"`
	Errors       uint64         `json:"errors"`
	Statuses     map[string]int `json:"statuses"`
	ErrorSamples []string       `json:"error_samples"`
	TotalS       float64        `json:"total_s"`
	LatenciesUS  []int64        `json:"latencies_us"`
}

// readMessages reads length-prefixed (uvarint) serialized messages from a file.
func readMessages(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var messages [][]byte
	for len(data) > 0 {
		size, n := binary.Uvarint(data)
		if n <= 0 || uint64(len(data)-n) < size {
			return nil, fmt.Errorf("%s: truncated length-prefixed message", path)
		}
		messages = append(messages, data[n:n+int(size)])
		data = data[n+int(size):]
	}
	if len(messages) == 0 {
		return nil, fmt.Errorf("%s: no messages", path)
	}
	return messages, nil
}

// idSuffix encodes a message that sets only the string field at fieldPath (field numbers,
// outermost first) to id; appended to a serialized message, it overrides that field.
func idSuffix(fieldPath []protowire.Number, id string) []byte {
	inner := protowire.AppendString(
		protowire.AppendTag(nil, fieldPath[len(fieldPath)-1], protowire.BytesType), id)
	for i := len(fieldPath) - 2; i >= 0; i-- {
		outer := protowire.AppendTag(nil, fieldPath[i], protowire.BytesType)
		inner = protowire.AppendBytes(outer, inner)
	}
	return inner
}

// inputTypeOf finds the request message type of call (package.Service.Method) in a protoset.
func inputTypeOf(protoset, call string) (*desc.MessageDescriptor, error) {
	data, err := os.ReadFile(protoset)
	if err != nil {
		return nil, err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%s: %w", protoset, err)
	}
	files, err := desc.CreateFileDescriptorsFromSet(&set)
	if err != nil {
		return nil, err
	}
	dot := strings.LastIndex(call, ".")
	if dot < 0 {
		return nil, fmt.Errorf("call %q is not package.Service.Method", call)
	}
	for _, file := range files {
		if service := file.FindService(call[:dot]); service != nil {
			if method := service.FindMethodByName(call[dot+1:]); method != nil {
				return method.GetInputType(), nil
			}
		}
	}
	return nil, fmt.Errorf("no method %s in %s", call, protoset)
}

func parsePath(spec string) ([]protowire.Number, error) {
	var path []protowire.Number
	for _, part := range strings.Split(spec, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad field path %q: want field numbers like 1.1", spec)
		}
		path = append(path, protowire.Number(n))
	}
	return path, nil
}

func run() error {
	target := flag.String("target", "", "host:port")
	call := flag.String("call", "", "fully-qualified method, e.g. inference.v1.InferenceService.Invoke")
	protoset := flag.String("protoset", "", "FileDescriptorSet with the service and its imports")
	messagesFile := flag.String("messages", "", "file of uvarint length-prefixed request messages, sent round-robin")
	concurrency := flag.Uint("c", 1, "concurrent calls in flight (closed loop)")
	connections := flag.Uint("connections", 1, "HTTP/2 connections shared by the calls")
	duration := flag.Duration("z", 10*time.Second, "run time")
	total := flag.Uint("n", 0, "send this many requests and stop (instead of -z): request i is message i mod their number")
	timeout := flag.Duration("timeout", 20*time.Second, "per-call deadline")
	cpus := flag.Uint("cpus", 1, "GOMAXPROCS for the load generator")
	uniqueID := flag.String("unique-id-field", "", "field-number path of a string id to make unique per call (e.g. 1.1)")
	idPrefix := flag.String("id-prefix", "bench-", "prefix of the unique ids (then the request number)")
	out := flag.String("out", "", "where to write the JSON result (default stdout)")
	cpuProfile := flag.String("cpuprofile", "", "write a Go CPU profile of the run here")
	rate := flag.Float64("rate", 0, "open loop: send this many requests a second for -z, latency from each request's due time (see openloop.go)")
	maxInFlight := flag.Int("max-in-flight", 2000, "open loop: most requests outstanding at once")
	httpBase := flag.String("http-base", "", "open loop: HTTP/1.1 GETs to this base URL (instead of gRPC)")
	httpPaths := flag.String("http-paths", "", "open loop: file of paths to GET round-robin")
	flag.Parse()
	if *cpuProfile != "" {
		file, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer file.Close()
		if err := pprof.StartCPUProfile(file); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *rate > 0 {
		return runOpenLoop(openLoopConfig{rate: *rate, duration: *duration, timeout: *timeout, inFlightLimit: *maxInFlight},
			*httpBase, *httpPaths, *target, *call, *messagesFile, *uniqueID, *idPrefix, *out)
	}
	if *target == "" || *call == "" || *protoset == "" || *messagesFile == "" {
		return errors.New("-target, -call, -protoset and -messages are required")
	}
	messages, err := readMessages(*messagesFile)
	if err != nil {
		return err
	}
	options := []runner.Option{
		runner.WithProtoset(*protoset),
		runner.WithInsecure(true),
		runner.WithConcurrency(*concurrency),
		runner.WithConnections(*connections),
		runner.WithTimeout(*timeout),
		runner.WithCPUs(*cpus),
		runner.WithCountErrors(true),
		runner.WithDisableTemplateFuncs(true),
		runner.WithDisableTemplateData(true),
	}
	if *total > 0 {
		options = append(options, runner.WithTotalRequests(*total))
	} else {
		options = append(options, runner.WithRunDuration(*duration), runner.WithDurationStopAction("wait"))
	}
	var path []protowire.Number
	if *uniqueID != "" {
		if path, err = parsePath(*uniqueID); err != nil {
			return err
		}
	}
	codec := &rawCodec{}
	inputType, err := inputTypeOf(*protoset, *call)
	if err != nil {
		return err
	}
	options = append(options,
		runner.WithDefaultCallOptions([]grpc.CallOption{
			grpc.ForceCodec(codec),
			grpc.MaxCallRecvMsgSize(1 << 30),
			grpc.MaxCallSendMsgSize(1 << 30),
		}),
		runner.WithDataProvider(func(cd *runner.CallData) ([]*dynamic.Message, error) {
			body := messages[int(cd.RequestNumber%int64(len(messages)))]
			if path != nil {
				suffix := idSuffix(path, *idPrefix+strconv.FormatInt(cd.RequestNumber, 10))
				body = append(append(make([]byte, 0, len(body)+len(suffix)), body...), suffix...)
			}
			placeholder := dynamic.NewMessage(inputType)
			codec.pending.Store(placeholder, body)
			return []*dynamic.Message{placeholder}, nil
		}))
	report, err := runner.Run(*call, *target, options...)
	if err != nil {
		return err
	}
	res := result{
		Target: *target, Call: *call, Concurrency: *concurrency, Connections: *connections,
		Count: report.Count, Statuses: report.StatusCodeDist, TotalS: report.Total.Seconds(),
	}
	samples := map[string]bool{}
	for _, d := range report.Details {
		if d.Status == "OK" && d.Error == "" {
			res.OK++
			res.LatenciesUS = append(res.LatenciesUS, d.Latency.Microseconds())
			continue
		}
		res.Errors++
		msg := d.Status + ": " + d.Error
		if len(samples) < 5 && !samples[msg] {
			samples[msg] = true
			res.ErrorSamples = append(res.ErrorSamples, msg)
		}
	}
	sort.Slice(res.LatenciesUS, func(i, j int) bool { return res.LatenciesUS[i] < res.LatenciesUS[j] })
	encoded, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.Write(append(encoded, '\n'))
		return err
	}
	return os.WriteFile(*out, encoded, 0o644)
}

func runOpenLoop(cfg openLoopConfig, httpBase, httpPaths, target, call, messagesFile, uniqueID, idPrefix, out string) error {
	if httpBase != "" {
		res, err := httpOpenLoop(cfg, httpBase, httpPaths)
		if err != nil {
			return err
		}
		return writeJSON(out, res)
	}
	if target == "" || call == "" || messagesFile == "" {
		return errors.New("-rate: -target, -call and -messages (or -http-base and -http-paths) are required")
	}
	messages, err := readMessages(messagesFile)
	if err != nil {
		return err
	}
	var path []protowire.Number
	if uniqueID != "" {
		if path, err = parsePath(uniqueID); err != nil {
			return err
		}
	}
	res, err := grpcOpenLoop(cfg, target, call, messages, path, idPrefix)
	if err != nil {
		return err
	}
	return writeJSON(out, res)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-ghz:", err)
		os.Exit(1)
	}
}
