// Package netns gives process-level tests network faults without touching
// the machine's network: private network namespaces, and TCP proxies that
// act as cuttable links.
//
// A namespace from New has only its own loopback. A process started in it
// (NS.Start) reaches nothing outside, except through the listeners the test
// opens inside it (NS.Listen). Open, inside the namespace, a listener on the
// very address a service has outside (say etcd's 127.0.0.1:2379 or a
// daemon's 127.0.0.12:40000) and put a Proxy behind it that forwards to the
// real service: the process then talks to the real service through a link
// the test can Blackhole (a partition: nothing flows, senders stall) and
// Heal (held data is delivered late, as after a real partition) or Reset.
// No address outside 127.0.0.0/8 is ever used and no packet leaves the
// machine.
//
// Creating namespaces needs CAP_SYS_ADMIN (root); New fails with
// ErrUnsupported otherwise. The Proxy works anywhere.
package netns
