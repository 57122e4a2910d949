package tombstone

// SignHop exposes signHop to the external tests (they play other clusters and forgers).
var SignHop = signHop
