"""Container baselines, matchers, compile, plan and the docker adapter's pure helpers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftd.core.compile_container import (
    ContainerSummary,
    compile_container,
    compile_ungoverned,
    governing,
    ungoverned_policy,
)
from driftd.core.diff import diff, reportable
from driftd.core.matchers import check
from driftd.core.plan import plan
from driftd.models.container import ContainerBaseline, Ungoverned
from driftd.models.resources import Action, ObservedResource

IMG_A = "sha256:" + "a" * 64
IMG_B = "sha256:" + "b" * 64


def baseline(name: str = "web", **spec: object) -> ContainerBaseline:
    body: dict[str, object] = {
        "selector": {"matchLabels": {"app": "web"}},
        "images": {"approved": [IMG_A]},
        "runtime": {"user": "1000", "privileged": False, "capAdd": [], "capDrop": ["ALL"],
                    "readOnlyRootFilesystem": True, "noNewPrivileges": True, "env": {"MODE": "prod"}},
    }
    body.update(spec)
    return ContainerBaseline.model_validate(
        {"apiVersion": "driftd.io/v1alpha1", "kind": "ContainerBaseline", "metadata": {"name": name}, "spec": body})


def hardened_inspect(**over: object) -> dict:
    ins = {
        "Id": "c" * 64, "Name": "/web1", "Image": IMG_A, "State": {"Running": True},
        "Config": {"User": "1000", "Env": ["PATH=/bin", "MODE=prod", "DB_PASSWORD=hunter2"], "Labels": {"app": "web"},
                   "Cmd": ["sleep", "1000"], "Hostname": "cccccccccccc", "WorkingDir": "/srv"},
        "HostConfig": {"Privileged": False, "CapAdd": None, "CapDrop": ["ALL"], "ReadonlyRootfs": True,
                       "SecurityOpt": ["no-new-privileges:true"], "NetworkMode": "none",
                       "Binds": ["data:/data", "/var/run/docker.sock:/var/run/docker.sock"],
                       "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                       "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}},
        "Mounts": [{"Type": "volume", "Name": "data", "Source": "/var/lib/docker/volumes/data/_data"}],
    }
    for k, v in over.items():
        section, _, field = k.partition("__")
        if field:
            ins[section][field] = v  # type: ignore[index]
        else:
            ins[k] = v
    return ins


def observed_for(d, ins, fs=None):
    from driftd.core.container_engine import normalize

    env_rule = d.expected.get("env")
    keys = list(env_rule["$contains"]) if isinstance(env_rule, dict) else []
    return ObservedResource(key=d.key, actual=normalize(ins, fs, keys))


WEB1 = ContainerSummary(id="c" * 64, name="web1", image_id=IMG_A, labels={"app": "web"})


class TestSchema:
    def test_selector_must_select_something(self):
        """An empty container selector is rejected rather than matching every container."""
        with pytest.raises(ValidationError, match="needs matchLabels and/or names"):
            baseline(selector={})

    def test_unknown_override_rule_rejected(self):
        """actionOverrides must name a real runtime rule."""
        with pytest.raises(ValidationError, match="unknown runtime rule 'privilegd'"):
            baseline(actionOverrides={"privilegd": "retire"})

    def test_unpinned_refs_are_listed(self):
        """Tags are flagged as unpinned; ids and digests are not."""
        b = baseline(images={"approved": [IMG_A, "repo@sha256:" + "1" * 64, "busybox:1.0"]})
        assert b.spec.images.unpinned() == ["busybox:1.0"]

    def test_sizes_parse(self):
        """Memory limits accept Kubernetes-style units."""
        b = baseline(runtime={"resources": {"memory": "256Mi", "cpus": 0.5, "pidsLimit": 100}})
        assert b.spec.runtime.resources is not None and b.spec.runtime.resources.memory == 256 * 1024**2


class TestMatchers:
    @pytest.mark.parametrize(("rule", "actual", "ok"), [
        ({"$in": [1, 2]}, 2, True), ({"$in": [1, 2]}, 3, False),
        ({"$superset": ["ALL"]}, ["ALL", "X"], True), ({"$superset": ["ALL"]}, [], False),
        ({"$none_of": ["/"]}, ["/data"], True), ({"$none_of": ["/"]}, ["/", "/x"], False),
        ({"$contains": {"a": "1"}}, {"a": "1", "b": "2"}, True), ({"$contains": {"a": "1"}}, {"a": "2"}, False),
        ({"$all_match": ["/tmp/*"]}, ["/tmp/x"], True), ({"$all_match": ["/tmp/*"]}, ["/etc/x"], False),
        ({"$all_match": ["/tmp/*"]}, [], True),
    ])
    def test_matchers(self, rule, actual, ok):
        """Each matcher accepts what it should and rejects what it should."""
        assert check(rule, actual)[0] is ok


class TestCompileAndDiff:
    def test_hardened_container_has_no_drift(self):
        """A container matching every rule diffs clean (unrelated env and labels ignored)."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        assert diff(d, observed_for(d, hardened_inspect())) == ()

    def test_privileged_and_caps_drift(self):
        """Privileged, an added capability and a missing drop are each a drift."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        ins = hardened_inspect(HostConfig__Privileged=True, HostConfig__CapAdd=["NET_ADMIN"], HostConfig__CapDrop=None)
        fields = {f.field for f in diff(d, observed_for(d, ins))}
        assert fields == {"privileged", "capAdd", "capDrop"}

    def test_forbidden_docker_socket_mount(self):
        """Bind-mounting the Docker socket breaks the default forbiddenHostMounts rule."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        ins = hardened_inspect(Mounts=[{"Type": "bind", "Source": "/var/run/docker.sock"}])
        (drift,) = diff(d, observed_for(d, ins))
        assert drift.field == "forbiddenHostMounts" and drift.changes == ("forbidden:/var/run/docker.sock",)

    def test_fs_changes_outside_allowed_paths(self):
        """A file written under /etc is a filesystem drift; /tmp is allowed by default."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        (drift,) = diff(d, observed_for(d, hardened_inspect(), ["/etc/evil", "/tmp/ok"]))
        assert drift.field == "fsChanges" and drift.changes == ("not_allowed:/etc/evil",)

    def test_env_values_never_reported(self):
        """Env drift names the key but never a value, and ungoverned secrets are not even observed."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        ins = hardened_inspect(Config__Env=["MODE=dev", "DB_PASSWORD=hunter2"])
        obs = observed_for(d, ins)
        assert "DB_PASSWORD" not in obs.actual["env"]
        rep = reportable(d, diff(d, obs))
        assert "hunter2" not in repr(rep) and "dev" not in repr(rep)
        assert rep[0]["changes"] == ("differs:MODE",)

    def test_governing_baseline_first_by_name_and_ungoverned_policy(self):
        """The first matching baseline by name governs; the strictest ungoverned policy wins."""
        a, z = baseline("a-web"), baseline("z-web", ungoverned="retire")
        assert governing([z, a], WEB1) is a
        assert governing([a], ContainerSummary(id="x", name="db", image_id=IMG_A, labels={})) is None
        assert ungoverned_policy([a, z]) is Ungoverned.RETIRE
        assert ungoverned_policy([]) is Ungoverned.REPORT


class TestPlan:
    def test_runtime_drift_plans_recreate_with_current_approved_image(self):
        """Runtime drift on an approved image recreates with that image."""
        d = compile_container(baseline(), WEB1, [IMG_A, IMG_B])
        obs = observed_for(d, hardened_inspect(Image=IMG_B, HostConfig__Privileged=True))
        p = plan(d, obs, diff(d, obs))
        assert [a.action for a in p.actions] == [Action.RECREATE] and p.actions[0].params == {"image": IMG_B}

    def test_unapproved_image_retires_by_default(self):
        """An unapproved image breaks a retire rule: the plan retires."""
        d = compile_container(baseline(), WEB1, [IMG_A])
        obs = observed_for(d, hardened_inspect(Image=IMG_B))
        assert [a.action for a in plan(d, obs, diff(d, obs)).actions] == [Action.RETIRE]

    def test_unapproved_image_with_revert_recreates_on_approved(self):
        """images.action revert recreates the container on the first approved image."""
        d = compile_container(baseline(images={"approved": [IMG_A], "action": "revert"}), WEB1, [IMG_A])
        obs = observed_for(d, hardened_inspect(Image=IMG_B))
        p = plan(d, obs, diff(d, obs))
        assert p.actions[0].action is Action.RECREATE and p.actions[0].params["image"] == IMG_A

    def test_report_override_plans_nothing(self):
        """A rule overridden to report is detected but never acted on."""
        d = compile_container(baseline(actionOverrides={"privileged": "report"}), WEB1, [IMG_A])
        obs = observed_for(d, hardened_inspect(HostConfig__Privileged=True))
        p = plan(d, obs, diff(d, obs))
        assert p.drift and not p.actions and not p.blocked and not p.applies

    def test_non_root_without_user_is_blocked(self):
        """nonRoot cannot be restored without knowing which user to run as: blocked, not guessed."""
        d = compile_container(baseline(runtime={"nonRoot": True}), WEB1, [IMG_A])
        obs = observed_for(d, hardened_inspect(Config__User="root"))
        p = plan(d, obs, diff(d, obs))
        assert not p.actions and p.blocked and "runtime.user" in p.blocked

    def test_ungoverned(self):
        """Ungoverned containers are retired only under the retire policy."""
        obs = ObservedResource(key="docker:x", actual={"governed": False})
        for policy, actions in ((Ungoverned.RETIRE, [Action.RETIRE]), (Ungoverned.REPORT, [])):
            d = compile_ungoverned(WEB1, policy)
            assert [a.action for a in plan(d, obs, diff(d, obs)).actions] == actions


class TestRecreateConfig:
    def test_hardens_and_carries_over_the_rest(self):
        """The replacement applies every rule and keeps command, workdir, volumes, log config, other env."""
        from driftd.core.container_engine import recreate_config

        b = baseline(runtime={"user": "1000", "privileged": False, "capAdd": [], "capDrop": ["ALL"],
                              "readOnlyRootFilesystem": True, "noNewPrivileges": True,
                              "restartPolicy": {"name": "unless-stopped"}, "env": {"MODE": "prod"}})
        ins = hardened_inspect(HostConfig__Privileged=True, HostConfig__CapAdd=["NET_ADMIN"],
                               HostConfig__SecurityOpt=["label=disable"], Config__User="",
                               Config__Env=["PATH=/bin", "MODE=dev", "TOKEN=x"])
        body = recreate_config(ins, b.spec.runtime.model_dump(by_alias=True, mode="json"), IMG_A)
        hc = body["HostConfig"]
        assert body["Image"] == IMG_A and body["User"] == "1000"
        assert hc["Privileged"] is False and hc["CapAdd"] is None and hc["CapDrop"] == ["ALL"]
        assert hc["ReadonlyRootfs"] is True and "no-new-privileges=true" in hc["SecurityOpt"]
        assert hc["Binds"] == ["data:/data"]  # docker.sock removed, named volume kept
        assert hc["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
        assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
        assert body["Cmd"] == ["sleep", "1000"] and body["WorkingDir"] == "/srv"
        assert body["Env"] == ["PATH=/bin", "TOKEN=x", "MODE=prod"]
        assert "Hostname" not in body  # generated from the old id: the new container gets its own
        assert "label=disable" not in (hc["SecurityOpt"] or [])

    def test_leaf_changes(self):
        """Parent directories listed only because a child changed are dropped."""
        from driftd.core.container_engine import leaf_changes

        changes = [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/evil", "Kind": 1}, {"Path": "/root", "Kind": 0}]
        assert leaf_changes(changes) == ["/etc/evil", "/root"]


class TestSecondRuntime:
    def test_a_second_container_runtime_reuses_the_baseline_compile_and_plan(self):
        """A runtime other than Docker compiles, diffs and plans ContainerBaseline through the same core."""
        from driftd.core.plan import register_container_runtime

        register_container_runtime("podman")
        d = compile_container(baseline(), WEB1, [IMG_A], target="podman")
        assert (d.key, d.target) == ("podman:web1", "podman")
        obs = observed_for(d, hardened_inspect(Config__User="0"))
        p = plan(d, obs, diff(d, obs))
        assert [a.action for a in p.actions] == [Action.RECREATE] and p.blocked is None
