package coord

import "context"

// WhileHeld returns a context derived from ctx that is cancelled as soon
// as lease l is lost (released, expired with the session, or the
// coordinator closed), for work that must run only while l is held: a
// Puma shard, say, whose owner must stop acting on it the moment another
// process may hold it. cancel releases the watch; call it when the work
// ends.
func WhileHeld(ctx context.Context, l Lease) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-l.Lost():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
