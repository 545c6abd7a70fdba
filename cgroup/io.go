package cgroup

import (
	"fmt"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ioSettings converts LinuxBlockIO. Files: io.weight (iocost, 5.4) and
// io.max (4.5), one write per entry. v1 blkio weights (10..1000) are mapped
// onto io.weight (1..10000) as runc does; a throttle rate of 0 removes the
// limit, as it did in v1.
func ioSettings(r *specs.LinuxResources) ([]Setting, error) {
	b := r.BlockIO
	if b == nil {
		return nil, nil
	}
	if b.LeafWeight != nil {
		return nil, &LimitError{Field: "blockIO.leafWeight", Value: strconv.Itoa(int(*b.LeafWeight)), Reason: "leaf weights do not exist on cgroup v2"}
	}
	var out []Setting
	if b.Weight != nil && *b.Weight != 0 {
		w, err := ioWeight("blockIO.weight", *b.Weight)
		if err != nil {
			return nil, err
		}
		out = append(out, Setting{"io.weight", "default " + w})
	}
	for i, d := range b.WeightDevice {
		if d.LeafWeight != nil {
			return nil, &LimitError{Field: fmt.Sprintf("blockIO.weightDevice[%d].leafWeight", i), Value: strconv.Itoa(int(*d.LeafWeight)), Reason: "leaf weights do not exist on cgroup v2"}
		}
		if d.Weight == nil {
			continue
		}
		w, err := ioWeight(fmt.Sprintf("blockIO.weightDevice[%d].weight", i), *d.Weight)
		if err != nil {
			return nil, err
		}
		out = append(out, Setting{"io.weight", devNum(d.LinuxBlockIODevice) + " " + w})
	}
	for _, t := range []struct {
		field, key string
		devs       []specs.LinuxThrottleDevice
	}{
		{"blockIO.throttleReadBpsDevice", "rbps", b.ThrottleReadBpsDevice},
		{"blockIO.throttleWriteBpsDevice", "wbps", b.ThrottleWriteBpsDevice},
		{"blockIO.throttleReadIOPSDevice", "riops", b.ThrottleReadIOPSDevice},
		{"blockIO.throttleWriteIOPSDevice", "wiops", b.ThrottleWriteIOPSDevice},
	} {
		for i, d := range t.devs {
			if d.Major < 0 || d.Minor < 0 {
				return nil, &LimitError{Field: fmt.Sprintf("%s[%d]", t.field, i), Value: devNum(d.LinuxBlockIODevice), Reason: "negative device number"}
			}
			rate := "max"
			if d.Rate != 0 {
				rate = strconv.FormatUint(d.Rate, 10)
			}
			out = append(out, Setting{"io.max", devNum(d.LinuxBlockIODevice) + " " + t.key + "=" + rate})
		}
	}
	return out, nil
}

func ioWeight(field string, w uint16) (string, error) {
	if w < 10 || w > 1000 {
		return "", &LimitError{Field: field, Value: strconv.Itoa(int(w)), Reason: "must be 10..1000"}
	}
	return strconv.FormatUint(1+(uint64(w)-10)*9999/990, 10), nil
}

func devNum(d specs.LinuxBlockIODevice) string {
	return strconv.FormatInt(d.Major, 10) + ":" + strconv.FormatInt(d.Minor, 10)
}

// hugetlbSettings converts HugepageLimits to hugetlb.<size>.max (4.5,
// needs the hugetlb controller).
func hugetlbSettings(r *specs.LinuxResources) ([]Setting, error) {
	var out []Setting
	for i, h := range r.HugepageLimits {
		if h.Pagesize == "" || !validPagesize(h.Pagesize) {
			return nil, &LimitError{Field: fmt.Sprintf("hugepageLimits[%d].pageSize", i), Value: h.Pagesize, Reason: "want a size like 2MB or 1GB"}
		}
		out = append(out, Setting{"hugetlb." + h.Pagesize + ".max", strconv.FormatUint(h.Limit, 10)})
	}
	return out, nil
}

func validPagesize(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}
