package cgroup

import "fmt"

// DefaultTenant is the tenant group used for the empty tenant name.
const DefaultTenant = "default"

// ValidName checks a tenant or cell name before it becomes a cgroupfs path
// component: [a-z0-9][a-z0-9_-]{0,62}. No ".", no "/", nothing that could
// name a control file (those all contain ".") or escape the parent.
func ValidName(name string) error {
	if len(name) == 0 || len(name) > 63 {
		return fmt.Errorf("name %q: length %d not in 1..63: %w", name, len(name), ErrInvalidName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return fmt.Errorf("name %q: byte %q at %d not allowed (want [a-z0-9][a-z0-9_-]{0,62}): %w", name, c, i, ErrInvalidName)
		}
	}
	return nil
}

// tenantName maps "" to DefaultTenant and validates the result.
func tenantName(name string) (string, error) {
	if name == "" {
		name = DefaultTenant
	}
	if err := ValidName(name); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	return name, nil
}
