package confine

// legacyModeTests: arm64 has no mode-setting calls but the *at ones and
// fchmod (TestFilterSetID).
var legacyModeTests []modeTest

const legacyOpen = 0
