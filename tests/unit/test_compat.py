"""mkosi.default files of mkosi v3-v14: what they say means the same here, or is refused in one line."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mkosi.config import Config, OutputFormat, TreeSource, format_summary, parse_args
from mkosi.errors import ConfigError
from mkosi.settings import RETIRED, RETIRED_BY_KEY, CleanPackageMetadata
from mkosi.tree import package_metadata, removed_files, with_image_fields, write_autologin


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def load(*argv: str) -> Config:
    return parse_args(list(argv))[1]


def error(*argv: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_args(list(argv))
    assert e.value.exit_status == 2 and "\n" not in str(e.value)
    return str(e.value)


def test_bootable_without_format_is_a_raw_gpt_image(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nBootable=yes\n")
    config = load()
    assert (config.format, config.bootable, config.output) == (OutputFormat.raw_gpt, True, project / "image.raw")


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("gpt_ext4", OutputFormat.raw_gpt),
        ("raw_ext4", OutputFormat.raw_gpt),
        ("raw_gpt", OutputFormat.raw_gpt),
        ("gpt_btrfs", OutputFormat.raw_btrfs),
        ("gpt_squashfs", OutputFormat.raw_squashfs),
    ],
)
def test_format_names_of_every_version(project: Path, name: str, format: OutputFormat) -> None:
    write(project / "mkosi.default", f"[Output]\nFormat={name}\n")
    assert load().format is format


@pytest.mark.parametrize("name", ["gpt_xfs", "raw_xfs", "plain_squashfs"])
def test_formats_not_built_here_are_refused_with_why(project: Path, name: str) -> None:
    write(project / "mkosi.default", f"[Output]\nFormat={name}\n")
    assert error().startswith(f"mkosi.default:2: [Output] Format: {name}: ")
    assert "not supported yet" in error()


@pytest.mark.parametrize("name", ["centos", "mageia"])
def test_distributions_without_an_installer_are_refused_with_why(project: Path, name: str) -> None:
    write(project / "mkosi.default", f"[Distribution]\nDistribution={name}\n")
    assert error() == (
        f"mkosi.default:2: [Distribution] Distribution: {name}: {name} images are not supported: "
        "mkosi has no installer for it (debian, ubuntu, fedora, opensuse, arch)"
    )


def test_content_and_host_sections(project: Path) -> None:
    (project / "bin").mkdir()
    write(
        project / "mkosi.default",
        "[Content]\nPackages=vim\nBuildPackages=gcc\nWithDocs=yes\nEnvironment=A=1\n"
        "[Host]\nExtraSearchPaths=bin\nQemuHeadless=yes\n",
    )
    config = load()
    assert (config.packages, config.build_packages, config.with_docs) == (("vim",), ("gcc",), True)
    assert config.environment == ("A=1",) and config.extra_search_paths == (project / "bin",)


def test_inline_comments_end_values(project: Path) -> None:
    write(project / "mkosi.default", "[Packages]\nPackages=vim # the editor\n  less  # a pager\n")
    assert load().packages == ("vim", "less")


def test_a_secret_keeps_what_looks_like_a_comment(project: Path) -> None:
    write(project / "mkosi.default", "[Validation]\nPassword=a #b\n")
    assert load().password == "a #b"


def test_empty_password_means_no_root_password(project: Path) -> None:
    write(project / "mkosi.default", "[Validation]\nPassword=hunter2\n")
    write(project / "mkosi.default.d/later", "[Content]\nPassword=\n")
    assert load().password == ""


def test_mixed_spellings_keep_the_later_and_warn(project: Path) -> None:
    write(project / "mkosi.default", "[Packages]\nPackages=old\nWithDocs=yes\n[Content]\nPackages=new\n")
    config = load()
    assert config.packages == ("new",) and config.with_docs
    warning = "mkosi.default:2: [Packages] Packages ignored: mkosi.default:5 sets it as [Content] Packages"
    assert config.warnings == (warning,)
    assert format_summary(config).splitlines()[0] == f"Warning: {warning}"


def test_files_next_to_mkosi_default_are_picked_up(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=tar\n")
    for name in ("mkosi.prepare", "mkosi.finalize"):
        write(project / name, "#!/bin/sh\n", 0o755)
    (project / "mkosi.skeleton").mkdir()
    (project / "mkosi.output").mkdir()
    write(project / "mkosi.rootpw", "secret\n", 0o600)
    config = load()
    assert config.prepare_script == project / "mkosi.prepare"
    assert config.finalize_script == project / "mkosi.finalize"
    assert config.skeleton_trees == (TreeSource(project / "mkosi.skeleton"),)
    assert config.output == project / "mkosi.output/image.tar"
    assert config.password_file == project / "mkosi.rootpw"


def test_output_directory_places_the_default_output(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nOutputDirectory=out\n")
    assert load().output == project / "out/image.raw"
    assert load("-o", "x.raw").output == project / "x.raw"


def test_extra_tree_with_a_target(project: Path) -> None:
    (project / "tree").mkdir()
    write(project / "mkosi.default", "[Content]\nExtraTree=tree:/opt/app\n")
    assert load().extra_trees == (TreeSource(project / "tree", PurePosixPath("/opt/app")),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[Content]\nExtraTree=tree:opt", "[Content] ExtraTree: invalid tree 'tree:opt': the target after ':' must be"),
        ("[Content]\nRemoveFiles=/usr/*/locale", "[Content] RemoveFiles: invalid path '/usr/*/locale': only its last"),
        (
            "[Content]\nEnvironment=1A=b",
            "[Content] Environment: invalid environment assignment '1A=b' (use NAME=VALUE)",
        ),
        ("[Content]\nSourceFileTransfer=mount", "[Content] SourceFileTransfer: mount is not supported"),
        ("[Output]\nBootProtocols=uefi bios", "[Output] BootProtocols: BIOS boot is not supported: images boot with"),
        ("[Output]\nWithUnifiedKernelImages=no", "[Output] WithUnifiedKernelImages: bootable images always boot"),
        ("[Output]\nQCow2=yes", "[Output] QCow2: qcow2 output is not supported yet"),
        ("[Host]\nSsh=yes", "[Host] Ssh: ssh access to booted images is not supported; only Ssh=no is accepted"),
        ("[Host]\nQemuMem=2G", "[Host] QemuMem: choosing mkosi qemu's memory (pass -m after the verb"),
        ("[Content]\nBasePackages=no", "[Content] BasePackages: BasePackages=no is not supported"),
        ("[Validation]\nBMap=yes\n[Output]\nFormat=tar", "[Validation] BMap: only supported with raw formats"),
    ],
)
def test_refusals_name_file_line_and_setting(project: Path, line: str, message: str) -> None:
    (project / "tree").mkdir()
    write(project / "mkosi.default", line + "\n")
    assert error().startswith(f"mkosi.default:2: {message}")


@pytest.mark.parametrize(
    "line",
    ["[Output]\nBootProtocols=uefi", "[Output]\nWithUnifiedKernelImages=yes", "[Host]\nQemuHeadless=1",
     "[Host]\nSsh=no", "[Content]\nBasePackages=conditional", "[Output]\nQCow2=no", "[Output]\nUsrOnly=false"],
)  # fmt: skip
def test_retired_keys_asking_for_what_mkosi_does_are_read(project: Path, line: str) -> None:
    write(project / "mkosi.default", line + "\n")
    read = load()
    write(project / "mkosi.default", line.split("\n")[0] + "\n")
    assert read == load()


def test_retired_keys_are_not_settings(project: Path) -> None:
    from mkosi.settings import SPELLINGS

    assert not set(RETIRED_BY_KEY) & set(SPELLINGS)
    assert all(r.reason for r in RETIRED)


def test_archived_releases_need_a_mirror(project: Path) -> None:
    write(project / "mkosi.default", "[Distribution]\nDistribution=debian\nRelease=stretch\n")
    assert error() == (
        "mkosi.default:3: [Distribution] Release: debian stretch is no longer on debian's main mirrors: it lives at "
        "http://archive.debian.org/debian; build it with Mirror=http://archive.debian.org/debian (or a mirror of "
        "that archive)"
    )
    assert load("--mirror=http://archive.debian.org/debian").release == "stretch"
    write(project / "mkosi.default", "[Distribution]\nDistribution=ubuntu\nRelease=focal\n")
    assert "it lives at http://old-releases.ubuntu.com/ubuntu" in error()


def test_os_release_gets_image_fields() -> None:
    text = with_image_fields('ID=debian\nIMAGE_ID="old"\n', {"IMAGE_ID": "x", "IMAGE_VERSION": "2"})
    assert text == "ID=debian\nIMAGE_ID=x\nIMAGE_VERSION=2\n"


def test_autologin_drop_ins(tmp_path: Path) -> None:
    write_autologin(tmp_path)
    conf = (tmp_path / "etc/systemd/system/serial-getty@.service.d/autologin.conf").read_text()
    assert "--autologin root" in conf and conf.startswith("[Service]\nExecStart=\n")


def test_remove_files_stays_inside_the_image(tmp_path: Path) -> None:
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "usr/share/locale/de").mkdir(parents=True)
    (root / "usr/share/locale/fr").mkdir()
    host.mkdir()
    (host / "precious").write_text("")
    (root / "escape").symlink_to(host)  # a link to the host's files: followed inside the image only
    found = removed_files(root, ("/usr/share/locale/*", "/escape/*"))
    assert found == [root / "usr/share/locale/de", root / "usr/share/locale/fr"]


def test_package_metadata(tmp_path: Path) -> None:
    (tmp_path / "var/lib/apt/lists").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    assert package_metadata(tmp_path, CleanPackageMetadata.no) == []
    # auto: no apt in the image, so nothing could use its metadata.
    assert tmp_path / "var/lib/apt" in package_metadata(tmp_path, CleanPackageMetadata.auto)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt").write_text("")
    assert package_metadata(tmp_path, CleanPackageMetadata.auto) == []
    assert package_metadata(tmp_path, CleanPackageMetadata.yes)[:2] == [
        tmp_path / "var/lib/apt",
        tmp_path / "var/lib/dpkg",
    ]
