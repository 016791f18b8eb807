package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits maps an upper-cased unit suffix to its multiplier. Units are
// binary: "8G", "8GB" and "8GiB" all mean 8×2³⁰ bytes, as they do for
// qemu-img and docker.
var sizeUnits = map[string]int64{
	"":    1,
	"B":   1,
	"K":   1 << 10,
	"KB":  1 << 10,
	"KIB": 1 << 10,
	"M":   1 << 20,
	"MB":  1 << 20,
	"MIB": 1 << 20,
	"G":   1 << 30,
	"GB":  1 << 30,
	"GIB": 1 << 30,
	"T":   1 << 40,
	"TB":  1 << 40,
	"TIB": 1 << 40,
}

// ParseSize reads a disk size such as "8G", "512M", "1024K", "2T", "8GiB" or
// a plain byte count. Units are binary and case-insensitive. The size must be
// a whole number greater than zero.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("disk size %q: empty; give a number with K, M, G or T, e.g. 8G", s)
	}
	i := 0
	for i < len(in) && in[i] >= '0' && in[i] <= '9' {
		i++
	}
	digits, unit := in[:i], strings.TrimSpace(in[i:])
	if digits == "" {
		return 0, fmt.Errorf("disk size %q: no number; give a number with K, M, G or T, e.g. 8G", s)
	}
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("disk size %q: use a whole number with a smaller unit (e.g. 1536M, not 1.5G)", s)
	}
	mult, ok := sizeUnits[strings.ToUpper(unit)]
	if !ok {
		return 0, fmt.Errorf("disk size %q: unknown unit %s; use K, M, G or T", s, unit)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("disk size %q: too large", s)
	}
	if n == 0 {
		return 0, fmt.Errorf("disk size %q: must be greater than zero", s)
	}
	return n * mult, nil
}

// FormatSize writes bytes in the largest binary unit that divides it
// exactly, the inverse of ParseSize ("8G", "1536M", "1000").
func FormatSize(bytes int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if bytes != 0 && bytes%u.mult == 0 {
			return strconv.FormatInt(bytes/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(bytes, 10)
}
