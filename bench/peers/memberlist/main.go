// A hashicorp/memberlist node for comparison with cohort's SWIM
// (`target/release/bench memberlist-peer`): one node per process.
//
//	memberlist -name n2 -bind 127.0.0.1:7001 -join 127.0.0.1:7000[,...]
//
// Configuration: memberlist.DefaultLANConfig() with exactly these changes:
//   - Name: the -name flag (the default is the host name);
//   - BindAddr / BindPort: the -bind flag (the defaults are 0.0.0.0:7946;
//     the advertised address then follows the bound one, as memberlist
//     does when AdvertiseAddr is empty);
//   - Events: a delegate that prints the events below;
//   - SecretKey: the -key flag (base64 of 32 bytes: AES-256-GCM, as cohort
//     seals its gossip), when given; without it gossip is in the clear,
//     memberlist's default.
//
// Everything else stays at the LAN defaults: probe interval 1 s, probe
// timeout 500 ms, suspicion multiplier 4 (max 6), 3 indirect checks,
// retransmit multiplier 4, gossip every 200 ms to 3 nodes, push-pull every
// 30 s, compression on, no encryption, and memberlist's own log (all
// levels) on stderr, which the bench reads for "Suspect X has failed".
//
// Outside memberlist's configuration, the process installs a go-metrics
// sink to count the bytes memberlist sends: memberlist reports them as the
// counters memberlist.udp.sent and memberlist.tcp.sent whatever its
// configuration.
//
// Standard output, one JSON object a line:
//
//	{"t_ms":<unix ms>,"event":"join|leave|update","node":"n3","members":N}
//	{"t_ms":<unix ms>,"event":"stats","members":N,"udp_bytes_sent":...,
//	 "udp_packets_sent":...,"tcp_bytes_sent":...,"tcp_streams_sent":...}
//
// members counts the nodes this one sees (itself included): joins add one,
// leaves (NotifyLeave, which memberlist calls for dead and for left nodes)
// take one away. A stats line answers each "stats" line on standard input.
// The process leaves nothing behind: it exits when standard input ends (the
// bench is gone) and on SIGINT/SIGTERM.
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metrics "github.com/armon/go-metrics"
	"github.com/hashicorp/memberlist"
)

var out struct {
	sync.Mutex
	enc *json.Encoder
}

func emit(v map[string]interface{}) {
	out.Lock()
	defer out.Unlock()
	v["t_ms"] = time.Now().UnixMilli()
	_ = out.enc.Encode(v)
}

// events prints every membership change; memberlist never calls it
// concurrently, but the stats answer reads the member set too.
type events struct {
	sync.Mutex
	alive map[string]bool
}

func (e *events) change(kind string, n *memberlist.Node) {
	e.Lock()
	if kind == "join" {
		e.alive[n.Name] = true
	} else if kind == "leave" {
		delete(e.alive, n.Name)
	}
	count := len(e.alive)
	e.Unlock()
	emit(map[string]interface{}{"event": kind, "node": n.Name, "members": count})
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.change("join", n) }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.change("leave", n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.change("update", n) }

func (e *events) members() int {
	e.Lock()
	defer e.Unlock()
	return len(e.alive)
}

// sink counts what memberlist sends; every other metric is dropped.
type sink struct {
	sync.Mutex
	udpBytes, udpPackets, tcpBytes, tcpStreams uint64
}

func (s *sink) IncrCounterWithLabels(key []string, val float32, _ []metrics.Label) {
	name := strings.Join(key, ".")
	s.Lock()
	defer s.Unlock()
	switch {
	case strings.HasSuffix(name, "memberlist.udp.sent"):
		s.udpBytes += uint64(val)
		s.udpPackets++
	case strings.HasSuffix(name, "memberlist.tcp.sent"):
		s.tcpBytes += uint64(val)
		s.tcpStreams++
	}
}

func (s *sink) IncrCounter(key []string, val float32)                           { s.IncrCounterWithLabels(key, val, nil) }
func (s *sink) SetGauge(key []string, val float32)                              {}
func (s *sink) SetGaugeWithLabels(key []string, val float32, _ []metrics.Label) {}
func (s *sink) EmitKey(key []string, val float32)                               {}
func (s *sink) AddSample(key []string, val float32)                             {}
func (s *sink) AddSampleWithLabels(key []string, val float32, _ []metrics.Label) {
}

func main() {
	name := flag.String("name", "", "node name")
	bind := flag.String("bind", "127.0.0.1:7946", "address:port for UDP and TCP")
	join := flag.String("join", "", "comma-separated seed addresses (none: start alone)")
	key := flag.String("key", "", "base64 of a 32-byte gossip key (none: plaintext)")
	flag.Parse()
	out.enc = json.NewEncoder(os.Stdout)
	if err := run(*name, *bind, *join, *key); err != nil {
		fmt.Fprintln(os.Stderr, "memberlist peer:", err)
		os.Exit(1)
	}
}

func run(name, bind, join, key string) error {
	host, portText, err := net.SplitHostPort(bind)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return err
	}

	counters := &sink{}
	metricsConfig := metrics.DefaultConfig("")
	metricsConfig.EnableHostname = false
	metricsConfig.EnableHostnameLabel = false
	metricsConfig.EnableRuntimeMetrics = false
	metricsConfig.EnableTypePrefix = false
	if _, err := metrics.NewGlobal(metricsConfig, counters); err != nil {
		return err
	}

	ev := &events{alive: map[string]bool{}}
	config := memberlist.DefaultLANConfig()
	if name != "" {
		config.Name = name
	}
	config.BindAddr = host
	config.BindPort = port
	config.Events = ev
	if key != "" {
		secret, err := base64.StdEncoding.DecodeString(key)
		if err != nil {
			return fmt.Errorf("-key: %w", err)
		}
		config.SecretKey = secret
	}
	list, err := memberlist.Create(config)
	if err != nil {
		return err
	}
	if join != "" {
		// memberlist's Join tries each seed once; under a 500-process
		// start a seed may be slow to answer, so try again (as cohort's
		// agent does) for a minute before giving up.
		seeds := strings.Split(join, ",")
		for attempt := 1; ; attempt++ {
			_, err := list.Join(seeds)
			if err == nil {
				break
			}
			if attempt == 60 {
				return fmt.Errorf("join %s: %w", join, err)
			}
			log.Printf("[WARN] peer: join attempt %d failed: %v", attempt, err)
			time.Sleep(time.Second)
		}
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	stdinClosed := make(chan struct{})
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			if strings.TrimSpace(lines.Text()) != "stats" {
				continue
			}
			counters.Lock()
			stats := map[string]interface{}{
				"event":            "stats",
				"members":          ev.members(),
				"udp_bytes_sent":   counters.udpBytes,
				"udp_packets_sent": counters.udpPackets,
				"tcp_bytes_sent":   counters.tcpBytes,
				"tcp_streams_sent": counters.tcpStreams,
			}
			counters.Unlock()
			emit(stats)
		}
		close(stdinClosed)
	}()
	select {
	case <-stop:
	case <-stdinClosed:
	}
	_ = list.Shutdown()
	return nil
}
