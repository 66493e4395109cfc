"""What notebook 09 shows (minicontainer/lessons/security.py), checked on real
containers: each layer of defence holds, and each demo's "allowed" half works."""

from __future__ import annotations

import pytest

import minicontainer as mc
from minicontainer.lessons import security as sec

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> mc.Runtime:
    runtime = mc.Runtime(tmp_path_factory.mktemp("state"))
    runtime.bootstrap()
    return runtime


def test_privileges_are_dockers(rt) -> None:
    p = sec.privileges(rt)
    assert len(p.effective) == 14 and "CAP_SYS_ADMIN" in p.dropped and "CAP_CHOWN" in p.effective
    assert p.no_new_privs


def test_seccomp_refuses_then_unconfined_allows(rt) -> None:
    seen = sec.seccomp_demo(rt)
    assert seen["default profile"].exit_code != 0
    assert "Operation not permitted" in seen["default profile"].output
    assert seen["seccomp=unconfined"].exit_code == 0
    f = sec.filter_view(rt)
    assert f.instructions > 100 and f.listing[0].startswith("seccomp filter for")
    assert "Seccomp:\t2" in f.seccomp_status


def test_device_demo_and_rules(rt) -> None:
    seen = sec.device_demo(rt)
    assert seen["default"].output.splitlines()[0] == "made"
    assert "Operation not permitted" in seen["default"].output
    assert seen["--device /dev/kmsg"].output.splitlines() == ["made", "written"]
    rules = sec.device_rules(rt)
    assert rules[:2] == ["c *:* m", "b *:* m"] and "c 1:3 rwm" in rules
    assert not any(r.startswith("a") or r == "c 1:11 rwm" for r in rules)


def test_pid1_is_never_a_host_binary(rt) -> None:
    plain = sec.pid1_view(rt, init=False)
    assert plain.inside == plain.host_exe == "/bin/busybox"
    sealed = sec.pid1_view(rt, init=True)
    assert sealed.host_exe == "/memfd:mcinit (deleted)"
    assert sealed.inside == "readlink: denied"  # non-dumpable
    assert sealed.host_cmdline == "mcinit ERRFD init sleep 30"
    assert len(sec.seals(rt)) == 4
