package layout

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// Category is a category directory found in a dfs.
type Category struct {
	Name string // the category
	Dir  string // its directory: Encode(Name)
}

// Categories lists the category directories at the root of fsys, in
// directory name order. Entries Encode cannot have made (files, hidden or
// foreign directories) are passed over. A long name whose sidecar is
// missing or does not match is returned in unreadable rather than as a
// category: a writer creates the sidecar before the first bucket, so that
// is damage (or a sidecar being replaced), and the caller says so.
func Categories(fsys dfs.FS) (cats []Category, unreadable []string, err error) {
	infos, err := fsys.ReadDir("")
	if err != nil {
		return nil, nil, fmt.Errorf("list categories in %s: %w", fsys, err)
	}
	for _, fi := range infos {
		if !fi.IsDir() {
			continue
		}
		name, hashed, ok := Decode(fi.Name())
		if !ok {
			continue
		}
		if hashed {
			name, err = ReadSidecar(fsys, fi.Name())
			if err != nil {
				unreadable = append(unreadable, fi.Name())
				continue
			}
		}
		cats = append(cats, Category{Name: name, Dir: fi.Name()})
	}
	return cats, unreadable, nil
}

// ReadSidecar returns the category of the hashed directory dir from its
// sidecar, checking that it is the category the name stands for.
func ReadSidecar(fsys dfs.FS, dir string) (string, error) {
	data, err := dfs.ReadFile(fsys, dir+"/"+SidecarName)
	if err != nil {
		return "", fmt.Errorf("read category sidecar of %s: %w", dir, err)
	}
	if !MatchesHashed(dir, string(data)) {
		return "", fmt.Errorf("check category sidecar of %s (%d bytes): %w", dir, len(data), ErrSidecarMismatch)
	}
	return string(data), nil
}

// ErrSidecarMismatch means a category directory's sidecar names another
// category: two categories whose long names hash alike, or damage.
var ErrSidecarMismatch = errors.New("category sidecar names another category")

// WriteSidecar makes sure the directory of a long category holds its
// sidecar; other categories need none. Several writers may call it at
// once: each writes its own hidden temporary file (unique names it, a
// lease epoch say) and renames it over the sidecar, and the contents are
// the same.
func WriteSidecar(fsys dfs.FS, category, unique string) error {
	if !NeedsSidecar(category) {
		return nil
	}
	p := SidecarPath(category)
	data, err := dfs.ReadFile(fsys, p)
	if err == nil {
		if !bytes.Equal(data, []byte(category)) {
			return fmt.Errorf("check %s: %w", p, ErrSidecarMismatch)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	tmp := CategoryDir(category) + "/" + SidecarName + "." + unique + TempSuffix
	f, err := fsys.Create(tmp)
	if errors.Is(err, fs.ErrExist) {
		// Left by a crash of the same grant's writer: ours to replace.
		if err := fsys.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", tmp, err)
		}
		f, err = fsys.Create(tmp)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write([]byte(category)); err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp) // the write error is the one to report
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp) // the close error is the one to report
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, p); err != nil {
		_ = fsys.Remove(tmp) // the rename error is the one to report
		return fmt.Errorf("publish %s: %w", p, err)
	}
	return nil
}
