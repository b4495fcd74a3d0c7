//go:build ignore

// Command mutate runs the package's tests against hand-written mutants of
// the read path (socket loan, packet queue, wake-ups): each mutation is a
// small change a maintainer could make by mistake, and some test must fail
// on it. See docs/mutations.md for the table of results.
//
// From the repository root:
//
//	go run docs/mutations/mutate.go                 # every mutation
//	go run docs/mutations/mutate.go -only L1,Q2     # some of them
//	go run docs/mutations/mutate.go -race=false     # skip the -race rerun
//	go run docs/mutations/mutate.go -list           # print the mutations
//	go run docs/mutations/mutate.go -dry            # check they apply and build
//
// For each mutation it checks that the file is unmodified in git, applies
// the change (an exact text replacement, which must match exactly once),
// runs `go test -count=1 -timeout 120s -json .`, then, if no test failed
// and -race is set, the same with -race; a test that hangs is reported
// and skipped in a rerun, so the tests after it still run. Finally it
// restores the file with `git checkout -- file`. It prints one line per mutation with the tests
// that failed (a survivor has none) and exits 1 if any mutant survived.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// interrupted is cancelled by SIGINT or SIGTERM: the test run in progress
// is killed and the mutated file restored before the harness exits.
var interrupted context.Context

type mutation struct {
	id, file, fn, what string
	old, new           string
}

var mutations = []mutation{
	// Wake-ups of readers (tcpPacketConn.readable).
	{"W1", "packet_conn_handle.go", "read", "passReadable never called by a reader that waited",
		"\tif waited {\n\t\th.pc.passReadable()\n\t}", "\t_ = waited"},
	{"W2", "tcp_packet_conn.go", "passReadable", "passes the token only if the queue is non-empty",
		"if pc.queue.len() > 0 || pc.isClosing() || pc.loan.onOffer() {", "if pc.queue.len() > 0 || pc.isClosing() {"},
	{"W3", "tcp_packet_conn.go", "passReadable", "passes the token only if the socket is on offer",
		"if pc.queue.len() > 0 || pc.isClosing() || pc.loan.onOffer() {", "if pc.isClosing() || pc.loan.onOffer() {"},
	{"W4", "tcp_packet_conn.go", "deliver", "no readable signal when the queue was empty",
		"if wasEmpty {\n\t\t\t\tsignal(pc.readable)\n\t\t\t}", "_ = wasEmpty"},

	// The packet queue and its pushers (packetQueue.writable).
	{"Q1", "packet_queue.go", "pop", "pop does not wake blocked pushers",
		"if pushers != nil {\n\t\tsignal(pushers)\n\t}", "_ = pushers"},
	{"Q2", "packet_queue.go", "push", "push does not pass the writable token on",
		"if passBaton != nil {\n\t\tsignal(passBaton)\n\t}", "_ = passBaton"},
	{"Q3", "packet_queue.go", "cancelWait", "cancelWait does nothing (as if not called)",
		"func (q *packetQueue) cancelWait() {\n\tq.mu.Lock()\n\tq.blocked--\n", "func (q *packetQueue) cancelWait() {\n\tq.mu.Lock()\n"},
	{"Q4", "packet_queue.go", "push", "queued packets not counted as received",
		"\treceived.add(len(p))\n", ""},
	{"Q5", "packet_queue.go", "releaseIfEmpty", "drops the buffer of a non-empty queue",
		"if q.count.Load() == 0 {\n\t\tq.releaseLocked()", "if true {\n\t\tq.releaseLocked()"},
	{"Q6", "packet_queue.go", "setMaxBytes", "lifting the bound does not wake blocked pushers",
		"if blocked != nil {\n\t\tsignal(blocked)\n\t}", "_ = blocked"},
	{"Q7", "packet_queue.go", "reserve", "an empty queue refuses a packet over the byte bound",
		"if q.used > 0 && q.used+n > q.maxBytes {", "if q.used+n > q.maxBytes {"},

	// The socket loan.
	{"L1", "socket_loan.go", "giveBack", "does not wake other waiting readers",
		"if others {\n\t\tsignal(l.readable)\n\t}", "_ = others"},
	{"L2", "socket_loan.go", "giveBack", "always keeps the socket on offer (ignores resume and allowed)",
		"if resume || l.mayLend != c {", "if false {"},
	{"L3", "socket_loan.go", "offer", "offers with no reader waiting",
		"if l.mayLend != c || l.state != lenderReads || l.waiting == 0 {", "if l.mayLend != c || l.state != lenderReads {"},
	{"L4", "socket_loan.go", "takeOrWait", "does not count the reader as waiting",
		"if l.state != offered {\n\t\tl.waiting++\n", "if l.state != offered {\n"},
	{"L5", "packet_conn_handle.go", "readOrWait", "stopWaiting not called after a wait",
		"\t\tpc.loan.stopWaiting()\n", ""},
	{"L6", "socket_loan.go", "setMayLend", "does not interrupt the holder of a socket that lost the right",
		"if l.state == held {\n\t\tl.lent.interruptReadLocked()\n\t\treturn", "if l.state == held {\n\t\treturn"},
	{"L7", "socket_loan.go", "setMayLend", "does not end a loan on offer that lost the right",
		"\t\treturn\n\t}\n\tl.endLocked()\n}", "\t\treturn\n\t}\n}"},
	{"L8", "socket_loan.go", "interrupt", "does nothing (deadline and Close do not reach the holder)",
		"if l.state == held && l.holder == h {\n\t\tl.lent.interruptReadLocked()\n\t}", "if false {\n\t\tl.lent.interruptReadLocked()\n\t}"},
	{"L9", "socket_loan.go", "armRead", "does not check that c may still lend",
		"if l.mayLend != c {\n\t\treturn errLoanEnded", "if false {\n\t\treturn errLoanEnded"},
	{"L10", "socket_loan.go", "armRead", "does not check a passed deadline whose timer has not fired",
		"if !time.Now().Before(d) {", "if false && !time.Now().Before(d) {"},
	{"L11", "socket_loan.go", "sweep", "never revokes an untouched offer",
		"case l.state == offered && l.uses == l.sweptUses:", "case false && l.uses == l.sweptUses:"},
	{"L12", "socket_loan.go", "sweep", "revokes held loans too",
		"case l.state == offered && l.uses == l.sweptUses:", "case l.uses == l.sweptUses:"},
	{"L13", "socket_loan.go", "offer", "an offer does not wake readers",
		"\tl.mu.Unlock()\n\tsignal(l.readable)\n\treturn true", "\tl.mu.Unlock()\n\treturn true"},
	{"L14", "socket_loan.go", "endLocked", "ending a loan does not resume the lender",
		"signal(l.lent.resume)", "_ = l.lent.resume"},
	{"L15", "conn_reader.go", "awaitLoanEnd", "the loan is not put under the sweeper's watch",
		"\tc.mux.watchLoan(&c.pc.loan)\n", ""},
	{"L16", "tcp_packet_conn.go", "connsChangedLocked", "lends with several connections",
		"pc.conns.len() == 1", "pc.conns.len() >= 1"},

	// Reading the socket (conn_reader.go, packet_conn_handle.go).
	{"R1", "conn_reader.go", "readDirect", "direct reads not counted in Stats",
		"\t\t\tc.traffic.rx.add(len(p))\n", ""},
	{"R2", "conn_reader.go", "readDirect", "a broken stream is not failed by the holder",
		"if !isTimeout(err) {\n\t\t\tc.fail(err)\n\t\t\treturn 0, errLoanEnded", "if !isTimeout(err) {\n\t\t\treturn 0, errLoanEnded"},
	{"R3", "packet_conn_handle.go", "readOrWait", "an idle socket stays on offer after giveBack",
		"pc.loan.giveBack(c, err == errLoanIdle || err == errLoanEnded)", "pc.loan.giveBack(c, err == errLoanEnded)"},
	{"R4", "conn_reader.go", "directIdleCheck", "the holder never parks an idle connection",
		"case c.readNothingSinceCheck():\n\t\tc.fr.park()", "case c.readNothingSinceCheck():"},
	{"R5", "conn_reader.go", "readLoop", "offers even with a whole frame buffered",
		"if !c.fr.hasFrame() && c.pc.loan.offer(c) {", "if c.pc.loan.offer(c) {"},

	// Found in review of the redesign, and the changes after it.
	{"L17", "socket_loan.go", "offer", "lends while another socket is on loan",
		"if l.mayLend != c || l.state != lenderReads || l.waiting == 0 {", "if l.mayLend != c || l.waiting == 0 {"},
	{"L18", "socket_loan.go", "takeOrWait", "takes the socket with packets queued",
		"\tif l.queue.len() > 0 {\n\t\treturn nil, true\n\t}\n", ""},
	{"W5", "tcp_packet_conn.go", "passReadable", "a closing PacketConn's wake-up is not passed on",
		"if pc.queue.len() > 0 || pc.isClosing() || pc.loan.onOffer() {", "if pc.queue.len() > 0 || pc.loan.onOffer() {"},
	{"D1", "deadline.go", "exceeded", "a passed deadline counts only once its timer fired",
		"\tif !d.armed.Load() {\n\t\treturn false\n\t}\n", "\tif true {\n\t\treturn false\n\t}\n"},
	{"Q8", "packet_queue.go", "pop", "a queue emptied after its connection went quiet keeps its tables",
		"\t\tif q.idle {\n\t\t\tq.releaseLocked()\n\t\t}\n", ""},

	// Writing (conn_writer.go).
	{"X1", "conn_writer.go", "own", "a write with no deadline ignores the deadline another handle left on the socket",
		"if !h.writeDeadline.armed.Load() && !c.wdlSet.Load() {", "if !h.writeDeadline.armed.Load() {"},

	{"X2", "write_sem.go", "release", "a release frees the semaphore without handing it to a waiting writer",
		"\tif s.waiters.Load() > 0 && s.tryAcquire() {\n\t\tsignal(*s.wake.Load())\n\t}\n", ""},
	{"X3", "write_sem.go", "acquire", "a waiting writer is not counted",
		"\ts.waiters.Add(1)\n", ""},

	// A wrapper's timeout that stuck (conn_reader.go).
	{"S1", "conn_reader.go", "awaitData", "a Read with no deadline that times out at once is not taken as stuck",
		"isTimeout(err) && time.Since(start) >= stuckTimeoutBound", "isTimeout(err) && start != (time.Time{})"},
	{"S2", "conn_reader.go", "pastIdleCheck", "a wrapper's own timeout goes straight back to reading",
		"\tif time.Now().Before(c.idleAt) || c.readNothingSinceCheck() {", "\tif !time.Now().Before(c.idleAt) && c.readNothingSinceCheck() {"},

	{"S3", "socket_loan.go", "armRead", "a holder reads on after a timeout nothing of ours caused",
		"\tif afterTimeout && time.Now().Before(c.rdl) {\n\t\tc.fr.park()\n\t\treturn errLoanIdle\n\t}\n", "\t_ = afterTimeout\n"},

	// Closing a PacketConn.
	{"T1", "tcp_packet_conn.go", "teardown", "closing does not wake the waiting readers",
		"\tpc.queue.close()\n\tpc.closing.Store(true)\n\tsignal(pc.readable)", "\tpc.queue.close()\n\tpc.closing.Store(true)"},
}

func main() {
	only := flag.String("only", "", "comma-separated mutation ids (default: all)")
	race := flag.Bool("race", true, "rerun a survivor's tests with -race")
	list := flag.Bool("list", false, "print the mutations and exit")
	timeout := flag.String("timeout", "120s", "go test -timeout")
	run := flag.String("run", "", "go test -run (default: every test)")
	dry := flag.Bool("dry", false, "only check that each mutation applies and builds")
	flag.Parse()
	var stop context.CancelFunc
	interrupted, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *list {
		for _, m := range mutations {
			fmt.Printf("%-4s %-22s %-20s %s\n", m.id, m.file, m.fn, m.what)
		}
		return
	}
	var ids []string
	if *only != "" {
		ids = strings.Split(*only, ",")
	}
	survivors := 0
	for _, m := range mutations {
		if ids != nil && !slices.Contains(ids, m.id) {
			continue
		}
		failed, err := check(m, *race, *dry, *timeout, *run)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", m.id, err)
			os.Exit(2)
		}
		verdict := "KILLED"
		switch {
		case *dry:
			verdict = "APPLIES"
		case len(failed) == 0:
			verdict = "SURVIVED"
			survivors++
		}
		fmt.Printf("%-4s %-10s %s.%s: %s | %s\n", m.id, verdict, m.file, m.fn, m.what, strings.Join(failed, ", "))
	}
	if survivors > 0 {
		os.Exit(1)
	}
}

// check applies m, runs the tests, restores the file, and returns the
// failed tests (or why the run failed).
func check(m mutation, race, dry bool, timeout, run string) (failed []string, err error) {
	if err := git("diff", "--quiet", "--", m.file); err != nil {
		return nil, fmt.Errorf("%s has local changes; commit or stash them first", m.file)
	}
	src, err := os.ReadFile(m.file)
	if err != nil {
		return nil, err
	}
	if n := bytes.Count(src, []byte(m.old)); n != 1 {
		return nil, fmt.Errorf("the text to mutate occurs %d times in %s", n, m.file)
	}
	mutant := bytes.Replace(src, []byte(m.old), []byte(m.new), 1)
	if err := os.WriteFile(m.file, mutant, 0o644); err != nil {
		return nil, err
	}
	defer func() {
		if rerr := git("checkout", "--", m.file); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if dry {
		out, err := exec.CommandContext(interrupted, "go", "vet", ".").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("mutant does not build: %s", out)
		}
		return nil, nil
	}
	failed, err = goTestSkippingHangs(timeout, run, false)
	if err == nil && len(failed) == 0 && race {
		var raced []string
		raced, err = goTestSkippingHangs(timeout, run, true)
		for _, f := range raced {
			failed = append(failed, f+" (-race)")
		}
	}
	return failed, err
}

// maxHangs is how many times goTestSkippingHangs reruns the tests after a
// timeout.
const maxHangs = 3

// goTestSkippingHangs runs the tests and, when one hangs (the binary then
// dies at -timeout, and the tests after it never run), runs them again
// without it, so that the table shows which tests fail with a message
// besides the hang.
func goTestSkippingHangs(timeout, run string, race bool) ([]string, error) {
	var failed, skip []string
	for range maxHangs + 1 {
		f, hung, err := goTest(timeout, run, skip, race)
		if err != nil {
			return nil, err
		}
		for _, name := range f {
			if !slices.Contains(failed, name) {
				failed = append(failed, name)
			}
		}
		if len(hung) == 0 {
			break
		}
		for _, name := range hung {
			failed = append(failed, "timeout in "+name)
		}
		skip = append(skip, hung...)
	}
	return failed, nil
}

func git(args ...string) error {
	cmd := exec.Command("git", args...)
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

// goTest runs the package's tests but those in skip, and returns the
// top-level tests that failed (or "data race"), and those running when the
// binary timed out. A mutant that does not build is an error, not a kill.
func goTest(timeout, run string, skip []string, race bool) (failed, hung []string, err error) {
	args := []string{"test", "-count=1", "-timeout", timeout, "-json"}
	if race {
		args = append(args, "-race")
	}
	if run != "" {
		args = append(args, "-run", run)
	}
	if len(skip) > 0 {
		args = append(args, "-skip", "^("+strings.Join(skip, "|")+")$")
	}
	cmd := exec.CommandContext(interrupted, "go", append(args, ".")...)
	// go test runs the test binary as its child: kill both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	if interrupted.Err() != nil {
		return nil, nil, fmt.Errorf("interrupted")
	}

	add := func(list *[]string, s string) {
		if !slices.Contains(*list, s) {
			*list = append(*list, s)
		}
	}
	timedOut, running, racy := false, false, false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var ev struct{ Action, Test, Output string }
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if running && !strings.HasPrefix(ev.Output, "\t\t") {
			running = false
		}
		switch {
		case ev.Action == "build-fail" || strings.Contains(ev.Output, "[build failed]"):
			return nil, nil, fmt.Errorf("mutant does not build: %s", stderr.String())
		case ev.Action == "fail" && ev.Test != "" && !strings.Contains(ev.Test, "/"):
			add(&failed, ev.Test)
		case strings.Contains(ev.Output, "panic: test timed out"):
			timedOut = true
		case timedOut && strings.Contains(ev.Output, "running tests:"):
			running = true
		case running:
			name, _, _ := strings.Cut(strings.Fields(ev.Output)[0], "/")
			add(&hung, name)
		case strings.Contains(ev.Output, "WARNING: DATA RACE"):
			racy = true
		}
	}
	if racy {
		add(&failed, "data race")
	}
	if runErr != nil && len(failed) == 0 && len(hung) == 0 {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return nil, nil, fmt.Errorf("go test failed with no failed test: %v %s", runErr, msg)
	}
	return failed, hung, nil
}
