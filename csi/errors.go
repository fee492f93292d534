package csi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/snapshots"
)

// Code classifies err into the gRPC code the CSI spec asks for. The
// sentinels of package torus decide; text is never matched.
//
//	ErrNotExist                      NotFound
//	ErrExist                         AlreadyExists
//	ErrInvalid                       InvalidArgument
//	ErrInUse, ErrLocked              FailedPrecondition (attached elsewhere, by whom is in the message)
//	ErrNotInitialized                FailedPrecondition
//	ErrUnavailable, ErrClosed        Unavailable (etcd or the peers cannot be reached; retry)
//	ErrNoSpace                       ResourceExhausted
//	ErrFenced, ErrConflict           Aborted (a concurrent change won; retry)
//	ErrOutOfRange                    OutOfRange
//	ErrCorrupt                       DataLoss
//	a snapshot request not answered  DeadlineExceeded
//	context deadline / cancel        DeadlineExceeded / Canceled
//	anything else                    Internal
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, torus.ErrNotExist):
		return codes.NotFound
	case errors.Is(err, torus.ErrExist):
		return codes.AlreadyExists
	case errors.Is(err, torus.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, torus.ErrInUse), errors.Is(err, torus.ErrLocked), errors.Is(err, torus.ErrNotInitialized):
		return codes.FailedPrecondition
	case errors.Is(err, torus.ErrUnavailable), errors.Is(err, torus.ErrClosed):
		return codes.Unavailable
	case errors.Is(err, torus.ErrNoSpace):
		return codes.ResourceExhausted
	case errors.Is(err, torus.ErrFenced), errors.Is(err, torus.ErrConflict):
		return codes.Aborted
	case errors.Is(err, torus.ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, torus.ErrCorrupt):
		return codes.DataLoss
	case errors.Is(err, snapshots.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	return codes.Internal
}

// toStatus turns err into a gRPC status error whose message starts with op
// and keeps the whole cause (which volume, which holder, which endpoints),
// so the reason reaches the Kubernetes event.
func toStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // made by the driver itself
	}
	return status.Error(Code(err), fmt.Sprintf("%s: %v", op, err))
}

// invalid is an InvalidArgument status.
func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
