"""How mkosi starts systemd-nspawn, in one place.

These hosts may run without systemd as PID 1 and without D-Bus: nspawn must neither register the
container with machined nor move it into a scope of its own.
"""

NSPAWN = ["systemd-nspawn", "--register=no", "--keep-unit"]
# For commands mkosi runs in a tree as part of a build: no chatter, and no .nspawn file applied.
NSPAWN_BUILD = [*NSPAWN, "--quiet", "--settings=no"]
# Several builds may run containers on trees with the same name; nspawn's lock would refuse them.
NSPAWN_ENV = {"SYSTEMD_NSPAWN_LOCK": "0"}
