package nbd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/torus-storage/torus"
)

// errAbort ends a session the client aborted (NBD_OPT_ABORT).
var errAbort = errors.New("nbd: client aborted negotiation")

// export is the outcome of a successful negotiation: what the
// transmission phase serves.
type export struct {
	name  string
	sd    *sharedDev // nil in tests that serve a device directly
	dev   torus.Device
	flags uint16
	// meta: base:allocation was selected for this export, so
	// BLOCK_STATUS is allowed.
	meta bool
}

// negotiation is the option-haggling state of one connection.
type negotiation struct {
	tls        bool
	noZeroes   bool
	structured bool
	// metaName is the export name of the last SET_META_CONTEXT that
	// selected base:allocation; metaSet says whether there was one.
	metaName string
	metaSet  bool
}

// handshake runs the fixed newstyle handshake and option haggling. It
// returns the export to serve, or an error (errAbort included) that ends the
// session.
func (c *conn) handshake(ctx context.Context) (*export, error) {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, magicInit)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.w.Write(b); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return nil, err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("nbd: unknown client flags %#x", clientFlags)
	}
	c.neg.noZeroes = clientFlags&flagCNoZeroes != 0
	for {
		o, err := readOption(c.r)
		if err != nil {
			return nil, err
		}
		c.log.Debug("nbd: option", "option", o.code, "len", len(o.data), "too_long", o.tooLong)
		exp, err := c.option(ctx, o)
		if err != nil || exp != nil {
			return exp, err
		}
	}
}

// knownOption reports whether the server implements an option.
func knownOption(code uint32) bool {
	switch code {
	case optExportName, optAbort, optList, optStartTLS, optInfo, optGo,
		optStructuredReply, optListMetaContext, optSetMetaContext:
		return true
	}
	return false
}

// reply sends one option reply.
func (c *conn) reply(code, typ uint32, data []byte) error {
	_, err := c.w.Write(appendOptReply(nil, code, typ, data))
	return err
}

// replyErr sends an error reply with a message.
func (c *conn) replyErr(code, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	c.log.Debug("nbd: option refused", "option", code, "reply", typ&^repFlagError, "msg", msg)
	return c.reply(code, typ, []byte(msg))
}

// option handles one option. It returns a non-nil export when the
// transmission phase starts.
func (c *conn) option(ctx context.Context, o option) (*export, error) {
	cfg := &c.srv.cfg
	if cfg.TLSRequired && !c.neg.tls && o.code != optStartTLS && o.code != optAbort {
		if o.code == optExportName {
			return nil, errors.New("nbd: NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server")
		}
		return nil, c.replyErr(o.code, repErrTLSReqd, "TLS is required: use NBD_OPT_STARTTLS")
	}
	if o.tooLong {
		if o.code == optExportName {
			return nil, errors.New("nbd: NBD_OPT_EXPORT_NAME with an oversized name")
		}
		if !knownOption(o.code) {
			return nil, c.replyErr(o.code, repErrUnsup, "option %d not supported", o.code)
		}
		return nil, c.replyErr(o.code, repErrTooBig, "option payload too long")
	}
	switch o.code {
	case optExportName:
		return c.optExportName(ctx, o)
	case optAbort:
		c.reply(o.code, repAck, nil) // the client may already be gone
		return nil, errAbort
	case optList:
		return nil, c.optList(ctx, o)
	case optStartTLS:
		return nil, c.optStartTLS(ctx, o)
	case optInfo, optGo:
		return c.optInfoGo(ctx, o)
	case optStructuredReply:
		if len(o.data) != 0 {
			return nil, c.replyErr(o.code, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		c.neg.structured = true
		return nil, c.reply(o.code, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return nil, c.optMeta(o)
	default:
		return nil, c.replyErr(o.code, repErrUnsup, "option %d not supported", o.code)
	}
}

func (c *conn) optExportName(ctx context.Context, o option) (*export, error) {
	if !validString(o.data) || len(o.data) > maxString {
		return nil, errors.New("nbd: NBD_OPT_EXPORT_NAME with an invalid name")
	}
	exp, err := c.open(ctx, string(o.data))
	if err != nil {
		return nil, fmt.Errorf("nbd: export %q: %w", o.data, err)
	}
	var b []byte
	b = binary.BigEndian.AppendUint64(b, uint64(exp.dev.Size()))
	b = binary.BigEndian.AppendUint16(b, exp.flags)
	if !c.neg.noZeroes {
		b = append(b, make([]byte, handshakeZeroesLen)...)
	}
	if _, err := c.w.Write(b); err != nil {
		c.closeExport(exp)
		return nil, err
	}
	return exp, nil
}

func (c *conn) optList(ctx context.Context, o option) error {
	if len(o.data) != 0 {
		return c.replyErr(o.code, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	list, err := c.srv.exports.List(ctx)
	if err != nil {
		return c.replyErr(o.code, repErrPolicy, "listing exports: %v", err)
	}
	for _, e := range list {
		if len(e.Name) > maxString || !validString([]byte(e.Name)) || c.access(e.Name) == AccessNone {
			continue
		}
		d := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		d = append(d, e.Name...)
		if len(e.Description) <= maxString && validString([]byte(e.Description)) {
			d = append(d, e.Description...)
		}
		if err := c.reply(o.code, repServer, d); err != nil {
			return err
		}
	}
	return c.reply(o.code, repAck, nil)
}

func (c *conn) optStartTLS(ctx context.Context, o option) error {
	switch {
	case len(o.data) != 0:
		return c.replyErr(o.code, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case c.neg.tls:
		return c.replyErr(o.code, repErrInvalid, "TLS is already on")
	case c.srv.cfg.TLS == nil || c.nc == nil:
		return c.replyErr(o.code, repErrUnsup, "TLS is not configured")
	}
	if err := c.reply(o.code, repAck, nil); err != nil {
		return err
	}
	cfg := c.srv.cfg.TLS.Clone()
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	tc := tls.Server(c.nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.r, c.w, c.tc = tc, tc, tc
	// The spec: no negotiation state survives STARTTLS.
	c.neg = negotiation{tls: true, noZeroes: c.neg.noZeroes}
	c.log.Debug("nbd: TLS on", "version", tls.VersionName(tc.ConnectionState().Version))
	return nil
}

// resolve maps the empty name to the default export.
func (c *conn) resolve(ctx context.Context, name string) (string, error) {
	if name != "" {
		return name, nil
	}
	def, err := c.srv.exports.Default(ctx)
	if err != nil {
		return "", err
	}
	if def == "" {
		return "", fmt.Errorf("%w: no default export", torus.ErrNotExist)
	}
	return def, nil
}

// lookup finds an export's description in the provider's list.
func (c *conn) lookup(ctx context.Context, name string) (ExportInfo, error) {
	list, err := c.srv.exports.List(ctx)
	if err != nil {
		return ExportInfo{}, err
	}
	for _, e := range list {
		if e.Name == name {
			return e, nil
		}
	}
	return ExportInfo{}, fmt.Errorf("%w: export %q", torus.ErrNotExist, name)
}

// transmissionFlags computes the flags advertised for an export.
func (c *conn) transmissionFlags(readOnly bool) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendCache | tflagCanMultiConn)
	if readOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero
	}
	if c.neg.structured {
		f |= tflagSendDF
	}
	return f
}

// peerCert is the client's verified certificate, nil without one.
func (c *conn) peerCert() *x509.Certificate {
	if c.tc == nil {
		return nil
	}
	if certs := c.tc.ConnectionState().PeerCertificates; len(certs) > 0 {
		return certs[0]
	}
	return nil
}

// access is what the client may do with export name (Config.Authorizer).
func (c *conn) access(name string) Access {
	if c.srv.cfg.Authorizer == nil {
		return AccessReadWrite
	}
	return c.srv.cfg.Authorizer.Authorize(c.peerCert(), name)
}

// authorize checks that the client may see export name; it reports
// whether the client may only read it.
func (c *conn) authorize(name string) (readOnly bool, err error) {
	switch a := c.access(name); a {
	case AccessNone:
		who := strings.Join(Names(c.peerCert()), ",")
		if who == "" {
			who = "a client without a certificate"
		}
		c.log.Warn("nbd: export refused by the export list", "export", name, "client", who)
		return false, fmt.Errorf("%w: export %q is not in the export list of %s", torus.ErrPermission, name, who)
	case AccessReadOnly:
		return true, nil
	}
	return false, nil
}

// open resolves name and acquires its device.
func (c *conn) open(ctx context.Context, name string) (*export, error) {
	resolved, err := c.resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	grantRO, err := c.authorize(resolved)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.srv.cfg.HandshakeTimeout)
	defer cancel()
	sd, err := c.srv.acquire(ctx, resolved)
	if err != nil {
		return nil, err
	}
	return &export{
		name:  resolved,
		sd:    sd,
		dev:   sd.dev,
		flags: c.transmissionFlags(sd.readOnly || grantRO),
		meta:  c.neg.structured && c.neg.metaSet && c.neg.metaName == name,
	}, nil
}

// closeExport releases an export that never entered transmission.
func (c *conn) closeExport(exp *export) {
	if exp.sd != nil {
		c.srv.release(exp.sd)
	}
}

// repErrFor maps an open error to an option error reply.
func repErrFor(err error) uint32 {
	switch {
	case errors.Is(err, ErrServerClosed):
		return repErrShutdown
	case errors.Is(err, torus.ErrLocked), errors.Is(err, torus.ErrReadOnly), errors.Is(err, torus.ErrPermission):
		return repErrPolicy
	case errors.Is(err, torus.ErrInvalid):
		return repErrInvalid
	default:
		return repErrUnknown
	}
}

func (c *conn) optInfoGo(ctx context.Context, o option) (*export, error) {
	q, err := parseInfoRequest(o.data)
	if err != nil {
		return nil, c.replyErr(o.code, repErrInvalid, "malformed request")
	}
	var (
		size     int64
		flags    uint16
		resolved string
		exp      *export
		info     ExportInfo
		haveInfo bool
	)
	if o.code == optGo {
		exp, err = c.open(ctx, q.name)
		if err != nil {
			return nil, c.replyErr(o.code, repErrFor(err), "export %q: %v", q.name, err)
		}
		size, flags, resolved = exp.dev.Size(), exp.flags, exp.name
	} else {
		var grantRO bool
		resolved, err = c.resolve(ctx, q.name)
		if err == nil {
			grantRO, err = c.authorize(resolved)
		}
		if err == nil {
			info, err = c.lookup(ctx, resolved)
			haveInfo = true
		}
		if err != nil {
			return nil, c.replyErr(o.code, repErrFor(err), "export %q: %v", q.name, err)
		}
		size = info.Size
		readOnly := grantRO || info.ReadOnly || c.srv.cfg.ReadOnly || isSnapshot(resolved)
		if dev := c.srv.openDev(resolved); dev != nil {
			size = dev.Size()
			readOnly = readOnly || dev.ReadOnly()
		}
		flags = c.transmissionFlags(readOnly)
	}
	fail := func(err error) (*export, error) {
		if exp != nil {
			c.closeExport(exp)
		}
		return nil, err
	}
	d := binary.BigEndian.AppendUint16(nil, infoExport)
	d = binary.BigEndian.AppendUint64(d, uint64(size))
	d = binary.BigEndian.AppendUint16(d, flags)
	if err := c.reply(o.code, repInfo, d); err != nil {
		return fail(err)
	}
	if slices.Contains(q.infos, infoName) {
		d = binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.reply(o.code, repInfo, append(d, resolved...)); err != nil {
			return fail(err)
		}
	}
	if slices.Contains(q.infos, infoDescription) {
		if !haveInfo {
			info, _ = c.lookup(ctx, resolved) // best effort
		}
		if info.Description != "" && len(info.Description) <= maxString && validString([]byte(info.Description)) {
			d = binary.BigEndian.AppendUint16(nil, infoDescription)
			if err := c.reply(o.code, repInfo, append(d, info.Description...)); err != nil {
				return fail(err)
			}
		}
	}
	d = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	d = binary.BigEndian.AppendUint32(d, 1)
	d = binary.BigEndian.AppendUint32(d, PreferredBlockSize)
	d = binary.BigEndian.AppendUint32(d, MaxRequestSize)
	if err := c.reply(o.code, repInfo, d); err != nil {
		return fail(err)
	}
	if err := c.reply(o.code, repAck, nil); err != nil {
		return fail(err)
	}
	if o.code == optInfo {
		return nil, nil
	}
	return exp, nil
}

func (c *conn) optMeta(o option) error {
	set := o.code == optSetMetaContext
	if set {
		c.neg.metaSet = false // replaced even when this fails
	}
	if !c.neg.structured {
		return c.replyErr(o.code, repErrInvalid, "negotiate structured replies first")
	}
	q, err := parseMetaRequest(o.data)
	if err != nil {
		return c.replyErr(o.code, repErrInvalid, "malformed request")
	}
	match := false
	for _, s := range q.queries {
		if s == metaAllocCtx || (!set && s == "base:") {
			match = true
		}
	}
	if !set && len(q.queries) == 0 {
		match = true
	}
	if match {
		id := uint32(0)
		if set {
			id = metaAllocID
			c.neg.metaSet, c.neg.metaName = true, q.name
		}
		d := binary.BigEndian.AppendUint32(nil, id)
		if err := c.reply(o.code, repMetaContext, append(d, metaAllocCtx...)); err != nil {
			return err
		}
	}
	return c.reply(o.code, repAck, nil)
}
