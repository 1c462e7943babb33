// Open-loop mode (-rate): requests are sent on a fixed schedule, request i at start + i/rate,
// whether or not the earlier ones have been answered (wrk2's model), and each latency is measured
// from the moment the request was due, not from when it went out: a stall of the server (or of
// this sender) counts against every request it delays, so there is no coordinated omission.
//
// Two kinds of target: native gRPC (-target, -call, the same pre-serialized messages and unique
// ids as the closed-loop mode, one HTTP/2 connection) and HTTP/1.1 GETs (-http-base and
// -http-paths: a file of paths sent round-robin; keep-alive connections, as many as are in
// flight). The output is the closed-loop mode's JSON plus the offered rate, the requests due
// and how far the sender ever fell behind its schedule (max_send_lag_us; a large value means
// this process, not the server, was the bottleneck).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// bytesCodec sends []byte request bodies as they are and keeps responses undecoded.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.(*[]byte); ok {
		return *b, nil
	}
	return nil, fmt.Errorf("bytesCodec: %T", v)
}

func (bytesCodec) Unmarshal(data []byte, v any) error {
	if b, ok := v.(*[]byte); ok {
		*b = data
		return nil
	}
	return fmt.Errorf("bytesCodec: %T", v)
}

func (bytesCodec) Name() string { return "proto" }

type openLoopResult struct {
	result
	OfferedRate   float64 `json:"offered_rate"`
	Due           uint64  `json:"due"`
	MaxSendLagUS  int64   `json:"max_send_lag_us"`
	MaxInFlight   int     `json:"max_in_flight"`
	InFlightLimit int     `json:"in_flight_limit"`
}

type openLoopConfig struct {
	rate          float64
	duration      time.Duration
	timeout       time.Duration
	inFlightLimit int
}

// schedule calls fire(i) for request i at start + i/rate for the run's duration, at most
// inFlightLimit at once (past it the sender waits; the wait still counts in the latency),
// and waits for the last answers. fire gets the time the request was due.
func schedule(cfg openLoopConfig, fire func(i uint64, due time.Time) (string, string)) openLoopResult {
	interval := time.Duration(float64(time.Second) / cfg.rate)
	slots := make(chan struct{}, cfg.inFlightLimit)
	var mu sync.Mutex
	res := openLoopResult{OfferedRate: cfg.rate, InFlightLimit: cfg.inFlightLimit}
	res.Statuses = map[string]int{}
	samples := map[string]bool{}
	var wg sync.WaitGroup
	inFlight, maxInFlight := 0, 0
	start := time.Now()
	end := start.Add(cfg.duration)
	var i uint64
	for ; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if !due.Before(end) {
			break
		}
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		slots <- struct{}{}
		if lag := time.Since(due).Microseconds(); lag > res.MaxSendLagUS {
			res.MaxSendLagUS = lag
		}
		mu.Lock()
		inFlight++
		if inFlight > maxInFlight {
			maxInFlight = inFlight
		}
		mu.Unlock()
		wg.Add(1)
		go func(i uint64, due time.Time) {
			defer wg.Done()
			code, message := fire(i, due)
			latency := time.Since(due)
			<-slots
			mu.Lock()
			defer mu.Unlock()
			inFlight--
			res.Count++
			res.Statuses[code]++
			if message == "" {
				res.OK++
				res.LatenciesUS = append(res.LatenciesUS, latency.Microseconds())
				return
			}
			res.Errors++
			msg := code + ": " + message
			if len(samples) < 5 && !samples[msg] {
				samples[msg] = true
				res.ErrorSamples = append(res.ErrorSamples, msg)
			}
		}(i, due)
	}
	wg.Wait()
	res.Due = i
	// the run's time: the schedule and the last answers (a server that cannot keep up shows as
	// a rate below the offered one)
	res.TotalS = time.Since(start).Seconds()
	res.MaxInFlight = maxInFlight
	sort.Slice(res.LatenciesUS, func(a, b int) bool { return res.LatenciesUS[a] < res.LatenciesUS[b] })
	return res
}

func grpcOpenLoop(cfg openLoopConfig, target, call string, messages [][]byte, path []protowire.Number, idPrefix string) (openLoopResult, error) {
	dot := strings.LastIndex(call, ".")
	if dot < 0 {
		return openLoopResult{}, fmt.Errorf("call %q is not package.Service.Method", call)
	}
	method := "/" + call[:dot] + "/" + call[dot+1:]
	conn, err := grpc.Dial(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(bytesCodec{}),
			grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		return openLoopResult{}, err
	}
	defer conn.Close()
	res := schedule(cfg, func(i uint64, due time.Time) (string, string) {
		body := messages[int(i%uint64(len(messages)))]
		if path != nil {
			suffix := idSuffix(path, idPrefix+strconv.FormatUint(i, 10))
			body = append(append(make([]byte, 0, len(body)+len(suffix)), body...), suffix...)
		}
		ctx, cancel := context.WithDeadline(context.Background(), due.Add(cfg.timeout))
		defer cancel()
		var reply []byte
		err := conn.Invoke(ctx, method, &body, &reply)
		if err == nil {
			return "OK", ""
		}
		st := status.Convert(err)
		return st.Code().String(), st.Message()
	})
	res.Target, res.Call = target, call
	return res, nil
}

func httpOpenLoop(cfg openLoopConfig, base, pathsFile string) (openLoopResult, error) {
	file, err := os.Open(pathsFile)
	if err != nil {
		return openLoopResult{}, err
	}
	var paths []string
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			paths = append(paths, line)
		}
	}
	file.Close()
	if len(paths) == 0 {
		return openLoopResult{}, fmt.Errorf("%s: no paths", pathsFile)
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        cfg.inFlightLimit,
		MaxIdleConnsPerHost: cfg.inFlightLimit,
		ForceAttemptHTTP2:   false,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport, Timeout: cfg.timeout}
	base = strings.TrimRight(base, "/")
	res := schedule(cfg, func(i uint64, due time.Time) (string, string) {
		resp, err := client.Get(base + paths[int(i%uint64(len(paths)))])
		if err != nil {
			return "transport", err.Error()
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		code := strconv.Itoa(resp.StatusCode)
		if err != nil {
			return code, err.Error()
		}
		if resp.StatusCode < 200 || resp.StatusCode >= 300 {
			if len(body) > 300 {
				body = body[:300]
			}
			return code, string(body)
		}
		return code, ""
	})
	transport.CloseIdleConnections()
	res.Target, res.Call = base, "GET "+pathsFile
	return res, nil
}

func writeJSON(out string, v any) error {
	encoded, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if out == "" {
		_, err = os.Stdout.Write(append(encoded, '\n'))
		return err
	}
	return os.WriteFile(out, encoded, 0o644)
}
