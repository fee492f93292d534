package netns

import (
	"errors"
	"net"
	"sync"
)

// Proxy forwards TCP connections accepted on a listener to an upstream
// address: one link of a test network that a test can cut and heal.
//
// While the link is cut (Blackhole), nothing flows in either direction:
// bytes already read are held, senders block once the kernel buffers fill,
// and new connections are accepted but not forwarded, just like a cable
// pulled out mid-stream. Heal lets everything held flow again (a healed
// partition delivers late packets); Reset closes every connection.
type Proxy struct {
	ln       net.Listener
	upstream string
	dial     func(addr string) (net.Conn, error)

	mu     sync.Mutex
	cond   *sync.Cond
	cut    bool
	closed bool
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
	p := &Proxy{ln: ln, upstream: upstream, dial: dial, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.acceptLoop()
	return p
}

// Addr is the listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

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

// Reset closes every open connection (the peers see a reset); new
// connections are still accepted.
func (p *Proxy) Reset() {
	p.mu.Lock()
	for c := range p.conns {
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

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
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

func (p *Proxy) pipe(dst, src net.Conn, dir int, done chan<- struct{}) {
	defer p.wg.Done()
	defer func() { done <- struct{}{} }()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitOpen() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			p.mu.Lock()
			p.bytes[dir] += int64(n)
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}
