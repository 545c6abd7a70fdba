package sandbox

import (
	"testing"
)

// TestGiveBack: an ended request's cell goes back for reuse only when the
// request may reuse it and the Cells can take it back; otherwise it is
// released for removal.
func TestGiveBack(t *testing.T) {
	for _, tt := range []struct {
		name     string
		recycler bool
		reuse    bool
		recycled int
		removeds int
	}{
		{"reuse", true, true, 1, 0},
		{"no reuse", true, false, 0, 1},
		{"cells that cannot recycle", false, true, 0, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeCells{}
			rc := &recyclingCells{fakeCells: fc}
			var cells Cells = fc
			if tt.recycler {
				cells = rc
			}
			r := newTestRunner(t, cells)
			c, err := cells.Get(t.Context(), r.profile)
			if err != nil {
				t.Fatal(err)
			}
			r.giveBack(c, tt.reuse)
			if rc.recycled != tt.recycled || fc.releases-rc.recycled != tt.removeds {
				t.Errorf("recycled %d, released %d; want %d and %d", rc.recycled, fc.releases-rc.recycled, tt.recycled, tt.removeds)
			}
		})
	}
}
