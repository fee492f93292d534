//go:build race

package rebalance

const raceEnabled = true
