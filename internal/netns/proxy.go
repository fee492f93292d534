package netns

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections accepted on a listener to an upstream
// address: one link of a test network that a test can cut, slow down,
// reset and heal.
//
// While the link is cut (Blackhole), nothing flows in either direction:
// bytes already read are held, senders block once the kernel buffers fill,
// and new connections are accepted but not forwarded, just like a cable
// pulled out mid-stream. Heal lets everything held flow again (a healed
// partition delivers late packets). SetDelay makes the link slow: every
// byte is held for a fixed time in each direction, order kept. Reset
// resets every connection (RST), as a peer's crash or a middlebox would.
type Proxy struct {
	ln       net.Listener
	upstream string
	dial     func(addr string) (net.Conn, error)
	quit     chan struct{} // closed by Close

	mu     sync.Mutex
	cond   *sync.Cond
	cut    bool
	closed bool
	delay  [2]time.Duration // [0] client→upstream, [1] upstream→client
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	bytes  [2]int64 // forwarded: [0] client→upstream, [1] upstream→client
}

// NewProxy serves ln, forwarding to upstream (dialed in the caller's
// namespace with net.Dial when dial is nil). Close stops it.
func NewProxy(ln net.Listener, upstream string, dial func(addr string) (net.Conn, error)) *Proxy {
	if dial == nil {
		dial = func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
	}
	p := &Proxy{ln: ln, upstream: upstream, dial: dial, quit: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.acceptLoop()
	return p
}

// Addr is the listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// Blackhole cuts the link: nothing flows until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
}

// Heal restores the link; data held while it was cut is delivered.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// SetDelay holds every byte read from now on for toUpstream (client to
// upstream) or toClient (upstream to client) before forwarding it: a slow
// link, or one whose replies arrive late. Bytes keep their order, so
// bytes read after the delay is lowered wait for those read before it.
// Zero ends the delay.
func (p *Proxy) SetDelay(toUpstream, toClient time.Duration) {
	p.mu.Lock()
	p.delay = [2]time.Duration{toUpstream, toClient}
	p.mu.Unlock()
}

// Reset resets every open connection: each is closed with SO_LINGER 0,
// so the peers see a TCP RST (ECONNRESET), not an orderly close. New
// connections are still accepted and forwarded.
func (p *Proxy) Reset() {
	p.mu.Lock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	p.mu.Unlock()
}

// Forwarded reports the bytes forwarded so far in each direction.
func (p *Proxy) Forwarded() (toUpstream, toClient int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes[0], p.bytes[1]
}

// Conns is the number of connections open through the proxy (each
// accepted connection and its upstream one count once together).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.quit)
	p.cond.Broadcast()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// waitOpen blocks while the link is cut; false once the proxy is closed.
func (p *Proxy) waitOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.cut && !p.closed {
		p.cond.Wait()
	}
	return !p.closed
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	if !p.waitOpen() {
		return
	}
	u, err := p.dial(p.upstream)
	if err != nil {
		return
	}
	if !p.track(u) {
		return
	}
	defer p.untrack(u)
	done := make(chan struct{}, 2)
	p.wg.Add(2)
	go p.pipe(u, c, 0, done)
	go p.pipe(c, u, 1, done)
	<-done
	// One direction ended: close both so the other ends too.
	c.Close()
	u.Close()
	<-done
}

// chunk is bytes read from one side, due for forwarding at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst: one goroutine reads and stamps each chunk with
// the link's delay, another forwards it when due and the link is open.
// When src ends, what was read is still forwarded, then pipe returns.
func (p *Proxy) pipe(dst, src net.Conn, dir int, done chan<- struct{}) {
	defer p.wg.Done()
	defer func() { done <- struct{}{} }()
	q := make(chan chunk, 1024)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-p.quit:
					t.Stop()
					return
				}
			}
			if !p.waitOpen() {
				return
			}
			if _, err := dst.Write(c.b); err != nil {
				return
			}
			p.mu.Lock()
			p.bytes[dir] += int64(len(c.b))
			p.mu.Unlock()
		}
	}()
	defer func() {
		close(q)
		<-wdone
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			due := time.Now().Add(p.delay[dir])
			p.mu.Unlock()
			select {
			case q <- chunk{b: append([]byte(nil), buf[:n]...), due: due}:
			case <-wdone: // dst failed
				return
			}
		}
		if err != nil {
			return
		}
	}
}
