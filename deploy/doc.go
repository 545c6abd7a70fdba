// Package deploy holds what runs cellgate in production, as files: the
// systemd units (systemd/), the Kubernetes manifests (kubernetes/) and the
// image build (cmd/image). Its tests check those files against systemd's
// own parser and the Kubernetes API types. Nothing imports it.
package deploy
