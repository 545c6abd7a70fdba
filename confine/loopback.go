package confine

// LoopbackUp sets IFF_UP on lo in the calling thread's network namespace:
// for a namespace the daemon makes ahead of its cell (sandbox), as the
// init does in one it made itself.
func LoopbackUp() error { return loopbackUp() }
