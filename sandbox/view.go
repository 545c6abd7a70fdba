package sandbox

import (
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellgate/cellgate/confine"
)

// A confined cell's view (its mount namespace's tree) is the host as it
// was when the view was made: a bind shows the directory its source named
// then, and a mask covers the daemon's file that was there then. A view
// made ahead (a mount template, a warm cell, a resident init, a fork
// route's preloader, whose children copy it) is used later, so what it
// shows is bounded in two ways:
//
//   - its age: no request starts in a view made more than viewMaxAge
//     before (a release directory swapped in by rename is seen by the
//     requests that start viewMaxAge after at the latest); a preloader's
//     age is its own (PreloaderConfig.RecycleAfter), the app's code having been
//     loaded through its view anyway;
//   - the daemon's files it covers (Prepared.Hidden): a policy file or TLS
//     key replaced on the host since (an editor's save renames a new file
//     over the old one) is no longer covered in a view made before, as the
//     kernel detaches a mount whose mount point is unlinked in another
//     mount namespace, and the view's path then shows the new file, with
//     its mode. A view whose hidden files are not the ones it covered is
//     used by no further request.
//
// Both are checked where a view made ahead is taken for a request (the
// template's take, the warm set's take), the covered files also before
// each child of a preloader (fork.go, try); a resident init's put back
// checks the age alone (the next take checks the files). A request
// already running in a view keeps it until it ends.

// viewMaxAge bounds the age of a view at the start of a request in it: a
// template serves for templateMaxAge, and a cell made from it is kept
// ahead for as long again.
const viewMaxAge = 2 * templateMaxAge

// viewStamp is when a view was made and the hidden files it covers.
type viewStamp struct {
	made   time.Time
	hidden []fileID
}

// hiddenNow reads the plan's hidden files as the host holds them now,
// each by its fileID; zero: no regular file there (a mask is bound only
// over one).
func hiddenNow(plan *confine.Prepared) []fileID {
	paths := plan.Hidden()
	if len(paths) == 0 {
		return nil
	}
	ids := make([]fileID, len(paths))
	for i, p := range paths {
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			ids[i] = fileID{dev: st.Dev, ino: st.Ino}
		}
	}
	return ids
}

// stampView is the stamp of a view about to be made from the host, taken
// before the making starts (a file replaced during it makes the stamp
// differ from the host's later, never agree with a view that missed it).
func stampView(plan *confine.Prepared) viewStamp {
	return viewStamp{made: time.Now(), hidden: hiddenNow(plan)}
}

// current reports whether a request starting at now may use the view,
// hidden being hiddenNow's answer for its plan.
func (v viewStamp) current(now time.Time, hidden []fileID) bool {
	return !v.aged(now) && v.covers(hidden)
}

// aged reports whether the view is viewMaxAge old at now.
func (v viewStamp) aged(now time.Time) bool { return now.Sub(v.made) >= viewMaxAge }

// covers reports whether the view covers the hidden files the host holds
// (hiddenNow's answer for its plan).
func (v viewStamp) covers(hidden []fileID) bool { return slices.Equal(v.hidden, hidden) }
