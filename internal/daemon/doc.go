// Package daemon is the one place that wires lazypull's pieces together, in the direction
// data flows: a registry (fetch) fills the node's store, the store serves the filesystem
// (fusefs). Neither fetch, store nor fusefs knows of the others; this package adapts each
// to the interface the next one declares.
package daemon
