"""Structure tests (container-structure-test files) on the real engine: every
kind and field passing and failing, the same verdicts as the real
container-structure-test binary, one-line validation errors, nothing left behind."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BUSYBOX, REPO

from ccp_tasks.checks.structure import (
    SUPPORTED,
    GoRegexError,
    go_expand,
    go_file_mode,
    go_regex,
    go_string,
    load_suite,
    run_suite,
)
from ccp_tasks.core.errors import ConfigError, EngineError

CST = REPO / ".venv" / "bin" / "container-structure-test"

# The fixture image, imported from a tarball made here (modes and owners exact,
# one engine call instead of a build step per instruction).
FILES = {  # path -> (mode, uid, gid, content); content None: a directory; "->x": a symlink to x
    "bin": (0o755, 0, 0, None),
    "etc": (0o755, 0, 0, None),
    "etc/app": (0o755, 0, 0, None),
    "etc/app/app.conf": (0o640, 12, 34, b"listen 8080\nname: ccp\n"),
    "etc/app/current": (0o777, 0, 0, "->/etc/app/app.conf"),
    "etc/app/digits": (0o644, 0, 0, "\u0663\n".encode()),  # an Arabic-Indic three: a digit, not an ASCII one
    # Texts of REGEX_CASES and REFUSED_BY_CCP.
    "etc/regex": (0o755, 0, 0, None),
    "etc/regex/greek": (0o644, 0, 0, "\u03b1\u03b2\u03b3".encode()),
    "etc/regex/kelvin": (0o644, 0, 0, "\u212a".encode()),  # KELVIN SIGN, which (?i) folds with k and K
    "etc/regex/truncated": (0o644, 0, 0, b"\xe2\x82"),  # a 3-byte UTF-8 sequence cut short: Go reads two U+FFFD
    "etc/regex/ready": (0o644, 0, 0, b"ready\n"),
    "etc/regex/long-s": (0o644, 0, 0, "\u017f".encode()),  # LATIN SMALL LETTER LONG S, which (?i) folds with s and S
    "etc/regex/cut-4-byte": (0o644, 0, 0, b"\xf0\x9f\x98"),
    "etc/regex/surrogate": (0o644, 0, 0, b"\xed\xa0\x80"),  # U+D800 encoded: not UTF-8, three bytes for Go
    "etc/regex/cjk-ext-i": (0o644, 0, 0, "\U0002ebf0".encode()),  # new in Unicode 15.1, unassigned in 15.0
    "opt": (0o755, 0, 0, None),
    "opt/app": (0o755, 0, 0, None),
    "opt/app/run": (0o750, 0, 0, b"#!/bin/sh\necho ready\n"),
    "srv": (0o755, 0, 0, None),
    "srv/data": (0o755, 0, 0, None),
    "tmp": (0o1777, 0, 0, None),
    **{
        f"bin/{applet}": (0o777, 0, 0, "->/bin/busybox")
        for applet in ("sh", "echo", "env", "ls", "cat", "touch", "true", "false", "sleep")
    },
}
CHANGES = [
    "ENV APP_HOME=/opt/app GREETING=hello",
    "LABEL org.example.role=fixture org.example.version=1.2.3 ccp.test.namespace={namespace}",
    "EXPOSE 8080 53/udp",
    "VOLUME /srv/data",
    "WORKDIR /opt/app",
    "USER 12",
    'ENTRYPOINT ["/bin/sh", "-c"]',
    'CMD ["echo from-cmd"]',
]


def _rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        busybox = tar.gettarinfo(str(BUSYBOX), arcname="bin/busybox")
        busybox.uid = busybox.gid = 0
        busybox.uname = busybox.gname = ""
        busybox.mode = 0o755
        with open(BUSYBOX, "rb") as handle:
            tar.addfile(busybox, handle)
        for path, (mode, uid, gid, content) in FILES.items():
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid = mode, uid, gid
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


PASSING = r"""
schemaVersion: "2.0.0"
globalEnvVars:
  - key: GLOBAL
    value: "g-$GREETING"
commandTests:
  - name: entrypoint bypassed, args expanded from the image env
    command: echo
    args: [one, 2, "$APP_HOME"]
    expectedOutput: ["^one 2 /opt/app\n$"]
    excludedOutput: ["from-cmd"]
  - name: stderr and a chosen exit code
    command: sh
    args: ["-c", "echo oops >&2; exit 3"]
    exitCode: 3
    expectedError: ["oops"]
    excludedError: ["panic"]
    excludedOutput: ["."]
  - name: envVars reach the container as written, globals expanded
    command: env
    envVars:
      - key: LOCAL
        value: "l-$GREETING"
    expectedOutput: ["(?m)^LOCAL=l-\\$GREETING$", "(?m)^GLOBAL=g-hello$"]
  - name: setup commands run and are committed first
    setup:
      - ["touch", "/tmp/made-by-setup"]
      - ["sh", "-c", "echo $GREETING > /tmp/greeting"]
    command: sh
    args: ["-c", "ls /tmp/made-by-setup && cat /tmp/greeting"]
    expectedOutput: ["hello"]
fileExistenceTests:
  - name: config file mode and owner
    path: /etc/app/app.conf
    permissions: "-rw-r-----"
    uid: 12
    gid: 34
  - name: start script, path from the image env
    path: $APP_HOME/run
    permissions: "-rwxr-x---"
    isExecutableBy: group
  - name: executable by owner
    path: /opt/app/run
    isExecutableBy: owner
  - name: executable by other
    path: /bin/busybox
    isExecutableBy: other
  - name: executable by any
    path: /opt/app/run
    isExecutableBy: any
  - name: a directory
    path: /etc/app
    permissions: "drwxr-xr-x"
  - name: a symlink
    path: /etc/app/current
    permissions: "Lrwxrwxrwx"
  - name: absent file
    path: /etc/shadow
    shouldExist: false
fileContentTests:
  - name: config content
    path: /etc/app/app.conf
    expectedContents: ["(?m)^listen 8080$", "name: ccp", "(?i)LISTEN\\s8080", "[[:digit:]]{4}", "\\bccp\\b"]
    excludedContents: ["listen 80$"]
  - name: read through a symlink
    path: /etc/app/current
    expectedContents: ["listen"]
  - name: Go's $ is the end of the text, not before its last newline
    path: /etc/app/app.conf
    excludedContents: ["ccp$"]
  - name: Go's \d is ASCII
    path: /etc/app/digits
    excludedContents: ["\\d"]
metadataTest:
  envVars:
    - {key: APP_HOME, value: /opt/app}
    - {key: GREETING, value: "^hel+o$", isRegex: true}
  unboundEnvVars:
    - {key: GLOBAL}
  labels:
    - {key: org.example.role, value: fixture}
    - {key: org.example.version, value: '^1\.\d+\.\d+$', isRegex: true}
  exposedPorts: ["8080", "53"]
  unexposedPorts: ["22"]
  volumes: [/srv/data]
  unmountedVolumes: [/var/lib/nothing]
  entrypoint: ["/bin/sh", "-c"]
  cmd: ["echo from-cmd"]
  workdir: /opt/app
  user: "12"
"""

FAILING = r"""
schemaVersion: "2.0.0"
commandTests:
  - name: wrong exit code
    command: "false"
  - name: stdout misses a pattern and has an excluded one
    command: echo
    args: [hello]
    expectedOutput: ["^goodbye"]
    excludedOutput: ["hel+o"]
  - name: stderr misses a pattern and has an excluded one
    command: sh
    args: ["-c", "echo err >&2"]
    expectedError: ["warning"]
    excludedError: ["err"]
  - name: envVars are not expanded into args without a setup
    command: echo
    args: ["[$LOCAL]"]
    envVars: [{key: LOCAL, value: x}]
    expectedOutput: ["\\[x\\]"]
  - name: no such command
    command: no-such-command
fileExistenceTests:
  - name: wrong permissions, uid and gid
    path: /etc/app/app.conf
    permissions: "-rwxr-xr-x"
    uid: 0
    gid: 0
  - name: not executable by owner
    path: /etc/app/app.conf
    isExecutableBy: owner
  - name: not executable by group
    path: /etc/app/app.conf
    isExecutableBy: group
  - name: not executable by other
    path: /opt/app/run
    isExecutableBy: other
  - name: not executable by any
    path: /etc/app/app.conf
    isExecutableBy: any
  - name: missing file
    path: /etc/app/missing
  - name: file that should not exist
    path: /etc/app/app.conf
    shouldExist: false
fileContentTests:
  - name: content misses a pattern and has an excluded one
    path: /etc/app/app.conf
    expectedContents: ["listen 9090"]
    excludedContents: ["listen"]
  - name: content of a missing file
    path: /etc/app/missing
    expectedContents: ["x"]
  - name: content of a directory
    path: /etc/app
    expectedContents: ["x"]
  - name: Go's $ does not match before the last newline
    path: /etc/app/app.conf
    expectedContents: ["ccp$"]
  - name: Go's \d does not match other digits
    path: /etc/app/digits
    expectedContents: ["\\d"]
metadataTest:
  envVars:
    - {key: APP_HOME, value: /srv}
    - {key: GREETING, value: "^bye", isRegex: true}
    - {key: NOPE, value: x}
  unboundEnvVars:
    - {key: GREETING}
  labels:
    - {key: org.example.role, value: other}
    - {key: org.example.version, value: '^2\.', isRegex: true}
    - {key: missing.label, value: x}
  exposedPorts: ["9090"]
  unexposedPorts: ["8080"]
  volumes: [/nope]
  unmountedVolumes: [/srv/data]
  entrypoint: ["/bin/bash"]
  cmd: []
  workdir: /
  user: root
"""

# Failed test -> what its one-line message must say.
FAILURES = {
    "wrong exit code": ["exit code 1, expected 0"],
    "stdout misses a pattern and has an excluded one": [
        "stdout does not match '^goodbye'; stdout matches excluded 'hel+o'"
    ],
    "stderr misses a pattern and has an excluded one": [
        "stderr does not match 'warning'; stderr matches excluded 'err'"
    ],
    "envVars are not expanded into args without a setup": ["stdout does not match '\\\\[x\\\\]'"],
    "no such command": ["could not start:", "no-such-command"],
    "wrong permissions, uid and gid": [
        "/etc/app/app.conf: permissions -rw-r-----, expected -rwxr-xr-x; "
        "/etc/app/app.conf: uid 12, expected 0; /etc/app/app.conf: gid 34, expected 0"
    ],
    "not executable by owner": ["/etc/app/app.conf: not executable by owner (-rw-r-----)"],
    "not executable by group": ["/etc/app/app.conf: not executable by group (-rw-r-----)"],
    "not executable by other": ["/opt/app/run: not executable by other (-rwxr-x---)"],
    "not executable by any": ["/etc/app/app.conf: not executable by any (-rw-r-----)"],
    "missing file": ["/etc/app/missing: does not exist"],
    "file that should not exist": ["/etc/app/app.conf: exists, expected not to"],
    "content misses a pattern and has an excluded one": [
        "/etc/app/app.conf: content does not match 'listen 9090'; /etc/app/app.conf: content matches excluded 'listen'"
    ],
    "content of a missing file": ["/etc/app/missing: does not exist"],
    "content of a directory": ["/etc/app: is a directory, not a file"],
    "Go's $ does not match before the last newline": ["content does not match 'ccp$'"],
    "Go's \\d does not match other digits": ["content does not match '\\\\d'"],
    "metadata": [
        'env APP_HOME="/opt/app", expected "/srv"',
        "env GREETING=\"hello\" does not match '^bye'",
        "env NOPE is not set",
        'env GREETING is set ("hello"), expected unset',
        'label org.example.role="fixture", expected "other"',
        "label org.example.version=\"1.2.3\" does not match '^2\\\\.'",
        "label missing.label is not set",
        "port 9090 is not exposed (exposed: 53, 8080)",
        "port 8080 is exposed, expected not",
        "volume /nope is not declared (volumes: /srv/data)",
        "volume /srv/data is declared, expected not",
        'entrypoint ["/bin/sh", "-c"], expected ["/bin/bash"]',
        'cmd ["echo from-cmd"], expected []',
        'workdir "/opt/app", expected "/"',
        'user "12", expected "root"',
    ],
}

CST_PREFIX = {
    "command": "Command Test: ",
    "file-existence": "File Existence Test: ",
    "file-content": "File Content Test: ",
    "metadata": "Metadata Test",
}


@dataclass
class Fixture:
    namespace: str
    ref: str
    image_id: str
    labels: dict
    suites: Path


def _remove_leftovers(client, namespace: str, fixture_image: str | None) -> None:
    """What container-structure-test --save kept: its containers (every one
    carries the fixture image's namespace label) with their anonymous
    volumes, then the images it committed. Targeted, because listing or
    pruning the images of a shared engine costs seconds."""
    from docker.errors import APIError

    containers = client.containers(all=True, filters={"label": f"ccp.test.namespace={namespace}"})
    for container in containers:
        client.remove_container(container["Id"], force=True, v=True)
    for image in {container["ImageID"] for container in containers} - {fixture_image}:
        try:
            client.remove_image(image)  # CST's commits, and their untagged parents, which are CST's too
        except APIError:
            pass  # already gone with a child


@pytest.fixture(scope="module")
def fixture(docker_client, tmp_path_factory):
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    ref = f"{namespace}/structure:latest"
    image_id = None
    try:
        docker_client.import_image_from_data(
            _rootfs(),
            repository=ref.rpartition(":")[0],
            tag="latest",
            changes=[change.replace("{namespace}", namespace) for change in CHANGES],
        )
        image_id = docker_client.inspect_image(ref)["Id"]
        suites = tmp_path_factory.mktemp("suites")
        (suites / "passing.yaml").write_text(PASSING)
        (suites / "failing.yaml").write_text(FAILING)
        yield Fixture(namespace, ref, image_id, {"io.ccp.check": f"{namespace}/structure"}, suites)
    finally:
        _remove_leftovers(docker_client, namespace, image_id)
        if image_id:
            docker_client.remove_image(image_id, force=True)


@pytest.fixture(scope="module")
def reference_runs(fixture):
    """The real container-structure-test on both files, started before our own
    runs so the two overlap (it spends most of a second per test committing)."""
    # --save: CST would otherwise leave its containers' anonymous volumes behind;
    # saved, _remove_leftovers() removes them with their volumes.
    procs = {
        name: subprocess.Popen(
            [
                str(CST),
                "test",
                "--image",
                fixture.ref,
                "--config",
                str(fixture.suites / name),
                "--output",
                "json",
                "--save",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("passing.yaml", "failing.yaml")
    }
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _run(docker_client, fixture: Fixture, name: str) -> dict:
    suite = load_suite(fixture.suites / name)
    results = run_suite(docker_client, fixture.ref, suite, labels=fixture.labels)
    assert len(results) == suite.count
    by_name = {result.name: result for result in results}
    assert len(by_name) == len(results), "test names must be unique for these assertions"
    return by_name


@pytest.fixture(scope="module")
def passing(docker_client, fixture, reference_runs):
    return _run(docker_client, fixture, "passing.yaml")


@pytest.fixture(scope="module")
def failing(docker_client, fixture, reference_runs):
    return _run(docker_client, fixture, "failing.yaml")


# ---------------------------------------------------------------- verdicts


def test_every_kind_and_field_passes(passing):
    failed = {name: result.message for name, result in passing.items() if not result.passed}
    assert failed == {}
    kinds = [result.kind for result in passing.values()]
    assert kinds.count("command") == 4 and kinds.count("file-existence") == 8
    assert kinds.count("file-content") == 4 and kinds.count("metadata") == 1
    assert all(result.message == "" and result.detail == "" for result in passing.values())


def test_every_kind_and_field_fails_with_a_message_saying_what_and_why(failing):
    assert {name for name, result in failing.items() if result.passed} == set()
    assert set(failing) == set(FAILURES)
    for name, phrases in FAILURES.items():
        message = failing[name].message
        assert "\n" not in message, name
        for phrase in phrases:
            assert phrase in message, f"{name}: {phrase!r} not in {message!r}"


def test_failed_command_detail_has_the_command_and_output_tails(failing):
    stderr_case = failing["stderr misses a pattern and has an excluded one"]
    assert stderr_case.kind == "command"
    assert 'command: ["sh", "-c", "echo err >&2"]' in stderr_case.detail
    assert "exit code: 0" in stderr_case.detail
    assert "stderr (last lines):\n  err" in stderr_case.detail
    # As in CST, envVars are substituted into args only after a setup committed them.
    assert 'command: ["echo", "[]"]' in failing["envVars are not expanded into args without a setup"].detail
    assert (
        "content (last lines):\n  listen 8080\n  name: ccp"
        in failing["content misses a pattern and has an excluded one"].detail
    )


def test_same_verdicts_as_container_structure_test(passing, failing, reference_runs):
    """The real binary accepts both files unchanged and agrees with every verdict."""
    for name, ours in (("passing.yaml", passing), ("failing.yaml", failing)):
        proc = reference_runs[name]
        stdout, stderr = proc.communicate(timeout=300)
        report = json.loads(stdout.strip().splitlines()[-1])
        theirs = {result["Name"]: result["Pass"] for result in report["Results"]}
        mine = {
            CST_PREFIX[result.kind] + (result.name if result.kind != "metadata" else ""): result.passed
            for result in ours.values()
        }
        assert theirs == mine, stdout + stderr
        assert proc.returncode == (0 if name == "passing.yaml" else 1), stderr


# Regexes as Go reads them: (pattern, file, whether Go's regexp matches), each
# compared with the real binary. Unicode classes, (?U), Go's $ and \z, ASCII
# \b \w [[:alpha:]], (?i) folding beyond ASCII, and invalid UTF-8 in the text.
REGEX_CASES = [
    (r"^\p{Greek}+$", "/etc/regex/greek", True),
    (r"\P{Greek}", "/etc/regex/greek", False),
    (r"\p{^Greek}", "/etc/regex/greek", False),
    (r"[\p{Greek}\d]{3}", "/etc/regex/greek", True),
    (r"\p{Cyrillic}|\p{Latin}", "/etc/regex/greek", False),
    (r"(?i)\p{Lu}", "/etc/regex/greek", True),
    (r"\pN", "/etc/app/digits", True),
    (r"\p{Nd}", "/etc/app/digits", True),
    (r"\d", "/etc/app/digits", False),
    ("(?U)^\u03b1+\u03b2", "/etc/regex/greek", True),
    ("(?U)\u03b1+?\u03b3", "/etc/regex/greek", False),
    (r"\w", "/etc/regex/greek", False),
    (r"[[:alpha:]]", "/etc/regex/greek", False),
    ("\\b\u03b1", "/etc/regex/greek", False),
    (r"(?i)k", "/etc/regex/kelvin", True),
    (r"(?i)[^k]", "/etc/regex/kelvin", False),
    (r"^..$", "/etc/regex/truncated", True),
    (r"^.$", "/etc/regex/truncated", False),
    (r"\x{FFFD}", "/etc/regex/truncated", True),
    (r"^\x{FFFD}{3}$", "/etc/regex/cut-4-byte", True),
    (r"^\x{FFFD}{3}$", "/etc/regex/surrogate", True),
    (r"\x{D800}", "/etc/regex/surrogate", False),
    (r"(?i)[[:lower:]]", "/etc/regex/kelvin", True),
    (r"(?i)\bK", "/etc/regex/kelvin", False),
    (r"(?i)[a-z]", "/etc/regex/long-s", True),
    (r"(?i)[^a-z]", "/etc/regex/long-s", False),
    (r"(?i)\w", "/etc/regex/long-s", True),
    (r"[[=a=]]", "/etc/app/app.conf", False),  # no POSIX equivalence class in Go: the characters [=a and ]
    (r"(?m)^\z", "/etc/regex/ready", True),
    (r"ready$", "/etc/regex/ready", False),
    (r"ready\z", "/etc/regex/ready", False),
    (r"ready\n\z", "/etc/regex/ready", True),
    (r"(?m)ready$", "/etc/regex/ready", True),
    (r"\Aready", "/etc/regex/ready", True),
    (r"\Q.*\E", "/etc/app/app.conf", False),
    (r"\Qlisten 8\E", "/etc/app/app.conf", True),
    (r"(?P<n>listen)(?<m> )", "/etc/app/app.conf", True),
    (r"8080.name", "/etc/app/app.conf", False),
    (r"(?s)8080.name", "/etc/app/app.conf", True),
]

# Patterns ccp refuses: (pattern, file, what Go does with it: "refuses" or
# whether it matches, what ccp's message says). Go refuses the first two,
# which RE2 would accept; the next three Go accepts, but RE2 would not give them
# Go's meaning (its Unicode 15.1 counts U+2EBF0 as a letter of Han, Go 1.22's
# Unicode 15.0 does not) or cannot compile them (its program size limit).
REFUSED_BY_CCP = [
    (r"\C|listen", "/etc/app/app.conf", "refuses", "invalid escape sequence: `\\C`"),
    ("(?<\u00e9>l)isten", "/etc/app/app.conf", "refuses", "invalid named capture: `(?<\u00e9>`"),
    (r"\p{Han}", "/etc/regex/cjk-ext-i", False, "(RE2, Unicode 15.1) counts characters in it"),
    (r"^\PL$", "/etc/regex/cjk-ext-i", True, "(RE2, Unicode 15.1) counts characters in it"),
    (r"\pL{1000}|listen", "/etc/app/app.conf", True, "too large for ccp's regexp engine"),
    # Refused by both, and by ccp in Go's words.
    (r"a{1,2}{3}|listen", "/etc/app/app.conf", "refuses", "invalid nested repetition operator: `{1,2}{3}`"),
    (r"(a{2}){501}|listen", "/etc/app/app.conf", "refuses", "invalid repeat count: `{501}`"),  # 1002 repeats
    (r"(?P<a-b>l)isten", "/etc/app/app.conf", "refuses", "invalid named capture: `(?P<a-b>`"),
    (r"[[:foo:]]|listen", "/etc/app/app.conf", "refuses", "invalid character class range: `[:foo:]`"),
    (r"\x{41|listen", "/etc/app/app.conf", "refuses", "invalid escape sequence: `\\x{41|`"),
]


def _content_suite(cases) -> dict:
    tests = [
        {"name": f"{i}: {pattern} on {path}", "path": path, "expectedContents": [pattern]}
        for i, (pattern, path, *_) in enumerate(cases)
    ]
    return {"schemaVersion": "2.0.0", "fileContentTests": tests}


def _cst_verdicts(proc) -> tuple[dict[str, bool], str]:
    stdout, stderr = proc.communicate(timeout=300)
    report = json.loads(stdout.strip().split("\n")[-1])  # splitlines() would also split a content at U+2028
    return {
        result["Name"].removeprefix(CST_PREFIX["file-content"]): result["Pass"] for result in report["Results"]
    }, stderr


@pytest.fixture(scope="module")
def regex_runs(docker_client, fixture):
    """REGEX_CASES by the real binary and by ccp, REFUSED_BY_CCP by the binary alone."""
    procs = {}
    for name, cases in (("regex.yaml", REGEX_CASES), ("refused.yaml", REFUSED_BY_CCP)):
        # JSON is YAML; ensure_ascii=False keeps characters beyond the BMP whole.
        (fixture.suites / name).write_text(json.dumps(_content_suite(cases), ensure_ascii=False), encoding="utf-8")
        procs[name] = subprocess.Popen(
            [
                str(CST),
                "test",
                "--image",
                fixture.ref,
                "--config",
                str(fixture.suites / name),
                "--output",
                "json",
                "--save",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        ours = {
            r.name: r.passed
            for r in run_suite(
                docker_client, fixture.ref, load_suite(fixture.suites / "regex.yaml"), labels=fixture.labels
            )
        }
        yield ours, _cst_verdicts(procs["regex.yaml"])[0], _cst_verdicts(procs["refused.yaml"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_regex_verdicts_are_go_s_and_the_binary_s(regex_runs):
    ours, theirs, _ = regex_runs
    expected = {
        test["name"]: matches
        for test, (_, _, matches) in zip(_content_suite(REGEX_CASES)["fileContentTests"], REGEX_CASES)
    }
    assert theirs == expected
    assert ours == expected


def test_patterns_ccp_refuses_and_what_go_does_with_them(regex_runs):
    import re2

    _, _, (theirs, stderr) = regex_runs
    for (pattern, _path, go, says), test in zip(REFUSED_BY_CCP, _content_suite(REFUSED_BY_CCP)["fileContentTests"]):
        with pytest.raises(GoRegexError, match=re.escape(says)) as caught:
            go_regex(pattern)
        if go == "refuses":
            # ccp's message is Go's own, which CST logs (its log doubles backslashes).
            logged = f'Error compiling regex {pattern} : error parsing regexp: {caught.value}"'.replace("\\", "\\\\")
            assert theirs[test["name"]] is False and logged in stderr, (pattern, stderr)
        else:
            assert theirs[test["name"]] is go, pattern
    # Why \p{Han} is refused: RE2 itself would match where Go does not.
    assert re2.search(r"\p{Han}", "\U0002ebf0") is not None


# Every Unicode class name of Go 1.22 (CST v1.19's Go): the general
# categories, then the scripts. Each partitions the code points.
CATEGORIES = "Cc Cf Co Ll Lm Lo Lt Lu Mc Me Mn Nd Nl No Pc Pd Pe Pf Pi Po Ps Sc Sk Sm So Zl Zp Zs".split()
SCRIPTS = """
Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan Balinese Bamum Bassa_Vah Batak Bengali Bhaiksuki
Bopomofo Brahmi Braille Buginese Buhid Canadian_Aboriginal Carian Caucasian_Albanian Chakma Cham Cherokee
Chorasmian Common Coptic Cuneiform Cypriot Cypro_Minoan Cyrillic Deseret Devanagari Dives_Akuru Dogra Duployan
Egyptian_Hieroglyphs Elbasan Elymaic Ethiopic Georgian Glagolitic Gothic Grantha Greek Gujarati Gunjala_Gondi
Gurmukhi Han Hangul Hanifi_Rohingya Hanunoo Hatran Hebrew Hiragana Imperial_Aramaic Inherited
Inscriptional_Pahlavi Inscriptional_Parthian Javanese Kaithi Kannada Katakana Kawi Kayah_Li Kharoshthi
Khitan_Small_Script Khmer Khojki Khudawadi Lao Latin Lepcha Limbu Linear_A Linear_B Lisu Lycian Lydian
Mahajani Makasar Malayalam Mandaic Manichaean Marchen Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui
Meroitic_Cursive Meroitic_Hieroglyphs Miao Modi Mongolian Mro Multani Myanmar Nabataean Nag_Mundari
Nandinagari New_Tai_Lue Newa Nko Nushu Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian Old_Italic
Old_North_Arabian Old_Permic Old_Persian Old_Sogdian Old_South_Arabian Old_Turkic Old_Uyghur Oriya Osage
Osmanya Pahawh_Hmong Palmyrene Pau_Cin_Hau Phags_Pa Phoenician Psalter_Pahlavi Rejang Runic Samaritan
Saurashtra Sharada Shavian Siddham SignWriting Sinhala Sogdian Sora_Sompeng Soyombo Sundanese Syloti_Nagri
Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil Tangsa Tangut Telugu Thaana Thai Tibetan Tifinagh
Tirhuta Toto Ugaritic Vai Vithkuqi Wancho Warang_Citi Yezidi Yi Zanabazar_Square
""".split()
UNICODE_15_1 = [*range(0x2EBF0, 0x2EE5E), *range(0x2FFC, 0x3000), 0x31EF]  # assigned in 15.1, not in Go's 15.0
# U+10FFFF, a noncharacter, is in no class of either: no \p{X}* can run over it.
SEPARATOR = "\U0010ffff"


def test_unicode_classes_have_go_s_members_but_for_unicode_15_1(docker_client, fixture, tmp_path):
    """For each partition (general categories, scripts, one-letter categories), one
    file holds every class's members as RE2 has them, minus Unicode 15.1's, apart;
    the real binary matches each class's part with Go's own class. Classes
    partition the code points, so all of RE2's classes but those with 15.1
    characters, the ones ccp refuses, have exactly Go's members."""
    import re2

    from ccp_tasks.checks.structure import _NEWER_IN_RE2

    newer = {chr(c) for c in UNICODE_15_1}
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    members = {name: "".join(re2.findall(rf"\p{{{name}}}+", text)) for name in [*CATEGORIES, *SCRIPTS, *"CLMNPSZ"]}
    assert {name for name, chars in members.items() if newer & set(chars)} == _NEWER_IN_RE2
    assert members["Han"].count("\U0002ebf0") == 1 and members["So"].count("\u2ffc") == 1
    # A newer RE2 (Unicode 16 adds scripts Go 1.22 has not) would need this test and _NEWER_IN_RE2 redone.
    with pytest.raises(re2.error):
        re2.compile(r"\p{Garay}")
    partitions = {"categories": CATEGORIES, "scripts": SCRIPTS, "one-letter": list("CLMNPSZ")}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, classes in partitions.items():
            parts = ["".join(ch for ch in members[c] if ch not in newer) for c in classes]
            data = SEPARATOR.join(parts).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    repository = f"{fixture.namespace}/unicode"
    docker_client.import_image_from_data(
        buffer.getvalue(),
        repository=repository,
        tag="latest",
        changes=[f"LABEL ccp.test.namespace={fixture.namespace}"],
    )
    try:
        tests = [
            {
                "name": name,
                "path": f"/{name}",
                "expectedContents": ["^" + r"\x{10FFFF}".join(rf"\p{{{c}}}*" for c in classes) + "$"],
            }
            for name, classes in partitions.items()
        ]
        (tmp_path / "unicode.yaml").write_text(json.dumps({"schemaVersion": "2.0.0", "fileContentTests": tests}))
        proc = subprocess.run(
            [
                str(CST),
                "test",
                "--image",
                f"{repository}:latest",
                "--config",
                str(tmp_path / "unicode.yaml"),
                "--output",
                "json",
                "--save",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        # A failed test's report holds the content; Python's splitlines would also split it at U+2028.
        report = json.loads(proc.stdout.strip().split("\n")[-1])
        verdicts = {r["Name"]: r["Pass"] for r in report["Results"]}
        assert verdicts == {CST_PREFIX["file-content"] + n: True for n in partitions}, proc.stderr[-2000:]
    finally:
        from docker.errors import NotFound

        _remove_leftovers(docker_client, fixture.namespace, fixture.image_id)
        try:
            docker_client.remove_image(f"{repository}:latest", force=True)
        except NotFound:
            pass  # removed with CST's containers


# ---------------------------------------------------------------- clean-up


class RecordingClient:
    """The real client, noting every container (and its volumes) and committed
    image of a run; optionally interrupted like a Ctrl-C."""

    def __init__(self, client, interrupt_on_wait: int | None = None):
        self._client = client
        self.created: list[str] = []  # not "containers": that is the client method clean-up calls
        self.anonymous_volumes: list[str] = []  # nor "volumes"
        self.committed: list[str] = []  # nor "images"
        self.waits = 0
        self.interrupt_on_wait = interrupt_on_wait

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_container(self, *args, **kwargs):
        created = self._client.create_container(*args, **kwargs)
        self.created.append(created["Id"])
        mounts = self._client.inspect_container(created["Id"])["Mounts"]
        self.anonymous_volumes += [mount["Name"] for mount in mounts if mount.get("Type") == "volume"]
        return created

    def commit(self, *args, **kwargs):
        committed = self._client.commit(*args, **kwargs)
        self.committed.append(committed["Id"])
        return committed

    def wait(self, *args, **kwargs):
        self.waits += 1
        if self.waits == self.interrupt_on_wait:
            raise KeyboardInterrupt
        return self._client.wait(*args, **kwargs)


SETUP_AND_FILES = """
schemaVersion: "2.0.0"
commandTests:
  - name: with a setup
    setup: [["touch", "/tmp/x"]]
    command: ls
    args: [/tmp/x]
fileExistenceTests:
  - name: a file
    path: /etc/app/app.conf
"""


def _assert_nothing_left(docker_client, fixture: Fixture, recorder: RecordingClient):
    from docker.errors import NotFound

    assert recorder.created and recorder.anonymous_volumes and recorder.committed
    label = f"io.ccp.check={fixture.labels['io.ccp.check']}"
    assert docker_client.containers(all=True, filters={"label": label}) == []
    for container in recorder.created:
        with pytest.raises(NotFound):
            docker_client.inspect_container(container)
    for volume in recorder.anonymous_volumes:
        with pytest.raises(NotFound):
            docker_client.inspect_volume(volume)
    for image in recorder.committed:
        with pytest.raises(NotFound):
            docker_client.inspect_image(image)
    docker_client.inspect_image(fixture.image_id)  # the image under test stays


def test_nothing_is_left_behind(docker_client, fixture, tmp_path):
    (tmp_path / "tests.yaml").write_text(SETUP_AND_FILES)
    recorder = RecordingClient(docker_client)
    # By ID, as the pipeline passes it: removing a setup commit must not prune its parent.
    results = run_suite(recorder, fixture.image_id, load_suite(tmp_path / "tests.yaml"), labels=fixture.labels)
    assert [result.passed for result in results] == [True, True]
    _assert_nothing_left(docker_client, fixture, recorder)


def test_an_interrupted_run_removes_what_it_made(docker_client, fixture, tmp_path):
    (tmp_path / "tests.yaml").write_text(SETUP_AND_FILES)
    recorder = RecordingClient(docker_client, interrupt_on_wait=2)  # after the setup was committed
    with pytest.raises(KeyboardInterrupt):
        run_suite(recorder, fixture.ref, load_suite(tmp_path / "tests.yaml"), labels=fixture.labels)
    assert recorder.committed, "the interruption should come after a commit"
    _assert_nothing_left(docker_client, fixture, recorder)


def test_a_bug_in_clean_up_is_not_taken_for_an_engine_failure(docker_client, fixture, tmp_path):
    """Clean-up passes over what the engine refuses, nothing else: a bug surfaces as itself."""

    class Buggy(RecordingClient):
        def containers(self, *args, **kwargs):
            raise TypeError("a bug in ccp")

    (tmp_path / "tests.yaml").write_text(SETUP_AND_FILES)
    recorder = Buggy(docker_client, interrupt_on_wait=1)
    try:
        with pytest.raises(TypeError, match="a bug in ccp"):
            try:
                run_suite(recorder, fixture.ref, load_suite(tmp_path / "tests.yaml"), labels=fixture.labels)
            except KeyboardInterrupt:
                pytest.fail("clean-up swallowed the bug (the interruption came out instead)")
    finally:
        from docker.errors import NotFound

        for container in recorder.created:  # the bug cut clean-up short
            try:
                docker_client.remove_container(container, force=True, v=True)
            except NotFound:
                pass
        for image in reversed(recorder.committed):  # children of the fixture's image, which teardown removes
            try:
                docker_client.remove_image(image, force=True)
            except NotFound:
                pass


def test_a_command_that_hangs_times_out(docker_client, fixture, tmp_path):
    (tmp_path / "tests.yaml").write_text(
        'schemaVersion: "2.0.0"\ncommandTests:\n  - name: hangs\n    command: sleep\n    args: ["30"]\n'
    )
    [result] = run_suite(
        docker_client, fixture.ref, load_suite(tmp_path / "tests.yaml"), labels=fixture.labels, command_timeout=1
    )
    assert not result.passed and result.message == "timed out after 1s"
    assert docker_client.containers(all=True, filters={"label": f"io.ccp.check={fixture.labels['io.ccp.check']}"}) == []


def test_files_of_an_image_without_a_shell(docker_client, fixture, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size, info.mode = 3, 0o444
        tar.addfile(info, io.BytesIO(b"hi\n"))
    repository = f"{fixture.namespace}/no-shell"
    docker_client.import_image_from_data(
        buffer.getvalue(),
        repository=repository,
        tag="latest",
        changes=[f"LABEL ccp.test.namespace={fixture.namespace}"],
    )
    try:
        (tmp_path / "tests.yaml").write_text(
            'schemaVersion: "2.0.0"\n'
            "fileExistenceTests:\n  - {name: exists, path: /hello, permissions: -r--r--r--}\n"
            "fileContentTests:\n  - {name: content, path: /hello, expectedContents: ['^hi']}\n"
        )
        results = run_suite(
            docker_client, f"{repository}:latest", load_suite(tmp_path / "tests.yaml"), labels=fixture.labels
        )
        assert [(r.name, r.passed) for r in results] == [("content", True), ("exists", True)]
    finally:
        docker_client.remove_image(f"{repository}:latest")


def test_a_missing_image_is_an_engine_error(docker_client, fixture, tmp_path):
    (tmp_path / "tests.yaml").write_text(SETUP_AND_FILES)
    with pytest.raises(EngineError, match=f"no image {fixture.namespace}/nope:latest"):
        run_suite(docker_client, f"{fixture.namespace}/nope:latest", load_suite(tmp_path / "tests.yaml"), labels={})


# ---------------------------------------------------------------- validation


MINIMAL_COMMAND = "commandTests:\n  - name: t\n    command: 'true'\n"

INVALID = [
    # (file body, the key path named, what the message says)
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "licenseTests:\n  - debian: true\n",
        "licenseTests",
        "not supported by ccp",
    ),
    (
        'schemaVersion: "2.0.0"\ncontainerRunOptions:\n  privileged: true\n' + MINIMAL_COMMAND,
        "containerRunOptions",
        "not supported by ccp",
    ),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    teardown: [[rm, /x]]\n",
        "commandTests[0].teardown",
        "not supported by ccp",
    ),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    expectedOuput: [x]\n",
        "commandTests[0].expectedOuput",
        "unknown key (did you mean 'expectedOutput'?)",
    ),
    (
        'schemaVersion: "2.0.0"\nmetadataTest:\n  labels: [{key: a, value: b, isRegx: true}]\n',
        "metadataTest.labels[0].isRegx",
        "unknown key (did you mean 'isRegex'?); known keys: isRegex, key, value",
    ),
    (
        'schemaVersion: "2.0.0"\ncommandTest:\n  - name: t\n',
        "commandTest",
        "unknown key (did you mean 'commandTests'?)",
    ),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    expectedOutput: ['ok', '(?<=x)y']\n",
        "commandTests[0].expectedOutput[1]",
        "bad regular expression '(?<=x)y': Go regexp has no lookaround",
    ),
    (
        'schemaVersion: "2.0.0"\nfileContentTests:\n  - {name: f, path: /x, excludedContents: ["a**"]}\n',
        "fileContentTests[0].excludedContents[0]",
        "bad regular expression 'a**': invalid nested repetition",
    ),
    (
        'schemaVersion: "1.0.0"\n' + MINIMAL_COMMAND,
        "schemaVersion",
        "'1.0.0' is not supported; ccp runs schema \"2.0.0\"",
    ),
    (MINIMAL_COMMAND, "", "missing required key 'schemaVersion'"),
    ('schemaVersion: "2.0.0"\ncommandTests:\n  - name: t\n', "commandTests[0]", "missing required key 'command'"),
    (
        'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - path: /x\n',
        "fileExistenceTests[0]",
        "missing required key 'name'",
    ),
    ('schemaVersion: "2.0.0"\nfileContentTests:\n  - name: f\n', "fileContentTests[0]", "missing required key 'path'"),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    exitCode: 'three'\n",
        "commandTests[0].exitCode",
        "expected an integer, got 'three'",
    ),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    args: {a: b}\n",
        "commandTests[0].args",
        "expected a list, got a mapping",
    ),
    ('schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    name: again\n", "commandTests[0].name", "given twice"),
    (
        'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - {name: f, path: /x, permissions: "-rwsr-xr-x"}\n',
        "fileExistenceTests[0].permissions",
        "Go writes setuid, setgid and sticky as letters before the type",
    ),
    (
        'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - {name: f, path: /x, isExecutableBy: everyone}\n',
        "fileExistenceTests[0].isExecutableBy",
        "expected one of owner, group, other, any",
    ),
    (
        'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - {name: f, path: /x, shouldExist: false, uid: 0}\n',
        "fileExistenceTests[0].uid",
        "never checked when shouldExist is false",
    ),
    (
        'schemaVersion: "2.0.0"\nmetadataTest:\n  exposedPorts: ["8080/tcp"]\n',
        "metadataTest.exposedPorts[0]",
        "write the port number alone",
    ),
    (
        'schemaVersion: "2.0.0"\nmetadataTest:\n  labels: [{key: a, value: "(", isRegex: true}]\n',
        "metadataTest.labels[0].value",
        "bad regular expression '('",
    ),
    (
        'schemaVersion: "2.0.0"\nmetadataTest:\n  envVars: [{key: A, value: b, isRegex: maybe}]\n',
        "metadataTest.envVars[0].isRegex",
        "expected true or false, got 'maybe'",
    ),
    (
        'schemaVersion: "2.0.0"\nglobalEnvVars: [{key: A, value: b, isRegex: true}]\n' + MINIMAL_COMMAND,
        "globalEnvVars[0].isRegex",
        "not supported by ccp",
    ),
    ('schemaVersion: "2.0.0"\nmetadataTest: {}\n', "metadataTest", "empty"),
    ('schemaVersion: "2.0.0"\ncommandTests: []\n', "", "no tests"),
    (
        'schemaVersion: "2.0.0"\n' + MINIMAL_COMMAND + "    envVars: [{key: A, value: }]\n",
        "commandTests[0].envVars[0].value",
        "expected a string, got nothing",
    ),
]


@pytest.mark.parametrize("body, key, says", INVALID, ids=[f"{i}-{case[1] or 'top'}" for i, case in enumerate(INVALID)])
def test_invalid_file_is_one_line_naming_file_and_key(tmp_path, body, key, says):
    path = tmp_path / "tests.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: " if key else f"{path}: "), message
    assert says in message, message
    assert message.endswith(")") and "(line " in message, message


def test_message_names_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("dockerfiles/nginx/tests.yaml")
    path.parent.mkdir(parents=True)
    path.write_text(
        'schemaVersion: "2.0.0"\ncommandTests:\n'
        + "  - {name: a, command: 'true'}\n" * 2
        + "  - name: c\n    command: 'true'\n    teardown: [[rm, /tmp/x]]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_suite(path)
    assert str(caught.value).startswith(
        "dockerfiles/nginx/tests.yaml: commandTests[2].teardown: not supported by ccp: "
    )
    assert "(supported: name, command, args, setup, envVars, exitCode, " in str(caught.value)


def test_yaml_scalars_read_as_cst_reads_them(tmp_path):
    """yaml.v2 puts a scalar's text into a string field: 8080, yes and 1.10 stay as written."""
    path = tmp_path / "tests.yaml"
    path.write_text(
        'schemaVersion: "2.0.0"\ndefaults: &d {command: echo}\ncommandTests:\n'
        "  - <<: *d\n    name: n\n    args: [8080, yes, 1.10, ~x]\n"
        "metadataTest:\n  exposedPorts: [8080]\n"
    )
    with pytest.raises(ConfigError, match="defaults: unknown key"):
        load_suite(path)
    path.write_text(
        'schemaVersion: "2.0.0"\ncommandTests:\n'
        "  - &d {command: echo, name: a}\n  - <<: *d\n    name: n\n    args: [8080, yes, 1.10, ~x]\n"
        "metadataTest:\n  exposedPorts: [8080]\n"
    )
    suite = load_suite(path)
    assert suite.command_tests[1].args == ("8080", "yes", "1.10", "~x")
    assert suite.command_tests[1].command == "echo"
    assert suite.metadata.exposed_ports == ("8080",)


def test_supported_map_covers_every_section():
    assert set(SUPPORTED["(top level)"]) == {
        "schemaVersion",
        "globalEnvVars",
        "commandTests",
        "fileExistenceTests",
        "fileContentTests",
        "metadataTest",
    }
    assert "teardown" not in SUPPORTED["commandTests[]"]
    assert "isRegex" in SUPPORTED["metadataTest.labels[]"]


# ---------------------------------------------------------------- Go semantics, no engine


@pytest.mark.parametrize(
    "pattern, text, matches",
    [
        ("ready$", "ready\n", False),
        ("ready$", "ready", True),
        ("(?m)^ready$", "x\nready\n", True),
        (r"ready\z", "ready", True),
        (r"\d", "\u0663", False),
        (r"\w+", "é", False),
        (r"\s", "\v", False),
        (r"[\S]", "\v", True),
        ("a{,2}", "a{,2}", True),
        (r"\Q.*\E", ".*", True),
        (r"\Q.*\E", "ab", False),
        ("[[:alpha:]]+", "abc", True),
        ("[[:^alpha:]]", "abc", False),
        (r"\101\x42\x{43}", "ABC", True),
        ("a(?i)b|c", "C", True),
        ("a(?i)b|c", "A", False),
        (r"\bword\b", "a word.", True),
        (r"\bword\b", "swordfish", False),
        ("(?P<1st>a)(?<n>b)", "ab", True),
        (".", "\n", False),
        ("(?s).", "\n", True),
        (r"\p{Greek}+", "\u03b1\u03b2", True),
        (r"\P{Greek}", "\u03b1", False),
        (r"(?U)a+?b", "aab", True),
        (r"\Q\C\E", "\\C", True),  # a literal \C is no any-byte escape
        ("(?P<n>a)(?P<n>b)", "ab", True),  # Go accepts a name given twice
        (r"(?i)k", "\u212a", True),
        ("\u03b1", "\ud800\u03b1", True),  # a lone surrogate in the text (a JSON escape) is no crash
    ],
)
def test_go_regex_semantics(pattern, text, matches):
    assert go_regex(pattern).search(text) is matches


@pytest.mark.parametrize(
    "pattern",
    [
        "(?=x)",
        "a**",
        "a++",
        r"\1",
        r"\Z",
        r"\y",
        "(",
        ")",
        "[a",
        "[z-a]",
        "a{1001}",
        r"x\E",
        r"\C",
        r"[\C]",
        "(?P<\u00e9>a)",
        "(a{100}){100}",
        "x{2}{3}",
        r"\p{Zzzz}",
        "\ud800",
    ],
)
def test_patterns_go_refuses_are_refused(pattern):
    with pytest.raises(GoRegexError):
        go_regex(pattern)


@pytest.mark.parametrize(
    "pattern, says",
    [
        ("a**", "invalid nested repetition operator: `**`"),
        ("(", "missing closing ): `(`"),
        ("[a", "missing closing ]: `[a`"),
        ("a\\", "trailing backslash at end of expression"),
        ("*", "missing argument to repetition operator: `*`"),
        ("a{1001}", "invalid repeat count: `{1001}`"),
        ("(?#x)", "invalid or unsupported Perl syntax: `(?#`"),
        ("(?<!x)", "Go regexp has no lookaround assertions: `(?<!`"),
        (r"\C", "invalid escape sequence: `\\C`"),
        ("(?P<\u00e9>a)", "invalid named capture: `(?P<\u00e9>`"),
        (r"[\pL]", "`\\pL` is not supported by ccp: its regexp engine (RE2, Unicode 15.1)"),
        (r"\P{^So}", "`\\P{^So}` is not supported by ccp"),
        (r"\p{Common}", "`\\p{Common}` is not supported by ccp"),
    ],
)
def test_refused_pattern_says_why_in_go_s_words(pattern, says):
    with pytest.raises(GoRegexError) as caught:
        go_regex(pattern)
    assert str(caught.value).startswith(says), str(caught.value)


def test_invalid_utf8_reads_as_go_reads_it():
    """Go decodes each byte of invalid UTF-8 as one U+FFFD; Python's "replace" would make one of a cut sequence."""
    assert go_string(b"\xe2\x82") == "\ufffd\ufffd"
    assert go_string(b"a\xffb\xed\xa0\x80") == "a\ufffdb\ufffd\ufffd\ufffd"  # an encoded surrogate: three bytes
    assert go_string("\u03b1\U0002ebf0".encode()) == "\u03b1\U0002ebf0"


def test_go_expand_is_os_expand():
    env = {"FOO": "bar"}
    cases = {
        "a$$b": "ab",
        "${FOO}": "bar",
        "$": "$",
        "x$": "x$",
        "${}": "",
        "${": "",
        "$1": "",
        "$FOO.x": "bar.x",
        "${F-O}": "",
        "plain": "plain",
        "$UNSET/x": "/x",
    }
    assert {s: go_expand(s, env) for s in cases} == cases


def test_go_file_mode_strings():
    assert go_file_mode(0o100640, tarfile.REGTYPE) == "-rw-r-----"
    assert go_file_mode(0o40755, tarfile.DIRTYPE) == "drwxr-xr-x"
    assert go_file_mode(0o120777, tarfile.SYMTYPE) == "Lrwxrwxrwx"
    assert go_file_mode(0o104755, tarfile.REGTYPE) == "urwxr-xr-x"
    assert go_file_mode(0o41777, tarfile.DIRTYPE) == "dtrwxrwxrwx"
