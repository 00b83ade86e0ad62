"""The result of one check (a lint rule, a structure test, an integration
check) and the files the check stages leave behind.

Every check stage (lint, spec, test) writes, per image, one JSON record of
its last run: `cache/results/<stage>/<image>.json` when every check passed
(that file is the task's target, so later stages can depend on it), or
`cache/results/<stage>/<image>.failed.json` when one failed (never a
target: a failed stage leaves nothing a later stage could mistake for a
pass). JUnit XML and the run summary are made from these records.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.core.state import Malformed, dump_json, fields, read_record, write_atomic

STAGES = ("lint", "spec", "test", "kube")
STAGE_TITLES = {
    "lint": "Dockerfile spec tests",
    "spec": "structure tests",
    "test": "integration tests",
    "kube": "pod checks",
}


@dataclass
class CheckResult:
    name: str  # what the check asserts, as the test file names it
    kind: str  # 'rule', 'command', 'file-existence', 'file-content', 'metadata', 'port', 'tls', 'http', …
    passed: bool
    message: str = ""  # one line: why it failed (empty when it passed)
    seconds: float = 0.0
    detail: str = ""  # longer evidence for a failure: output, container log tail

    @classmethod
    def from_dict(cls, data: dict) -> CheckResult:
        fields(data, {"message": str, "seconds": float, "detail": str}, name=str, kind=str, passed=bool)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass
class StageRecord:
    stage: str
    image: str
    passed: bool
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    ref: str = ""  # the image the checks ran against
    image_id: str = ""
    error: str = ""  # a failure that is not one check's (bad test file, engine down)

    def to_json(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def from_raw(cls, raw: Any) -> StageRecord:
        # Older records may lack the later keys; what a record holds must be of its type.
        fields(
            raw,
            {"checks": list, "seconds": float, "ref": str, "image_id": str, "error": str},
            stage=str,
            image=str,
            passed=bool,
        )
        raw = {**raw, "checks": [CheckResult.from_dict(check) for check in raw.get("checks", [])]}
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})

    @classmethod
    def read(cls, path: Path | str) -> StageRecord | None:
        """The record at `path`; None when it is missing or unusable (one warning names it)."""
        return read_record(path, "a check record", cls.from_raw)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]


def read_pass(path: Path | str) -> dict | None:
    """The record a passing stage left at `path` (its task's target), or None
    (one warning names an unusable one). Checked only as deep as an up-to-date
    check needs, since a run asks this of hundreds; the JUnit reports read the
    whole record (and skip one damaged deeper down)."""
    return read_record(path, "a check record", _passed)


def _passed(raw: Any) -> dict:
    fields(raw, stage=str, image=str, passed=bool, checks=list)
    if raw["passed"] is not True:
        raise Malformed("a failure where a pass belongs")
    return raw


def record_paths(layout: CacheLayout, stage: str, image: str) -> tuple[Path, Path]:
    """(passed, failed) record paths of one image's stage."""
    return Path(layout.result(stage, image)), Path(layout.failed_result(stage, image))


def save_record(layout: CacheLayout, record: StageRecord) -> Path:
    """Write the record where its outcome says, and remove the other one, so
    there is never both a pass and a failure on disk for one stage."""
    passed, failed = record_paths(layout, record.stage, record.image)
    keep, drop = (passed, failed) if record.passed else (failed, passed)
    drop.unlink(missing_ok=True)
    write_atomic(keep, record.to_json())
    return keep


def load_records(layout: CacheLayout, stage: str, images: Iterable[str]) -> list[StageRecord]:
    records = []
    for image in images:
        for path in record_paths(layout, stage, image):
            record = StageRecord.read(path)  # an unusable one is not worth failing a run for
            if record is not None:
                records.append(record)
    return records


def junit_xml(stage: str, records: list[StageRecord]) -> bytes:
    """One <testsuite> per image, one <testcase> per check: what Jenkins' junit step reads."""
    from xml.etree import ElementTree  # only runs that ran checks pay for it

    suites = ElementTree.Element("testsuites", name=f"ccp {STAGE_TITLES.get(stage, stage)}")
    total_tests = total_failures = total_errors = 0
    total_time = 0.0
    for record in sorted(records, key=lambda r: r.image):
        checks = record.checks
        errors = 1 if record.error else 0
        failures = len(record.failures)
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=f"{stage}.{record.image}",
            tests=str(len(checks) + errors),
            failures=str(failures),
            errors=str(errors),
            time=f"{record.seconds:.3f}",
        )
        if record.ref:
            properties = ElementTree.SubElement(suite, "properties")
            ElementTree.SubElement(properties, "property", name="image", value=record.ref)
            if record.image_id:
                ElementTree.SubElement(properties, "property", name="image_id", value=record.image_id)
        if record.error:
            case = ElementTree.SubElement(suite, "testcase", classname=f"{stage}.{record.image}", name="(setup)")
            error = ElementTree.SubElement(case, "error", message=record.error.splitlines()[0])
            error.text = record.error
        for check in checks:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=f"{stage}.{record.image}.{check.kind}",
                name=check.name,
                time=f"{check.seconds:.3f}",
            )
            if not check.passed:
                failure = ElementTree.SubElement(case, "failure", message=check.message, type=check.kind)
                failure.text = "\n".join(part for part in (check.message, check.detail) if part)
        total_tests += len(checks) + errors
        total_failures += failures
        total_errors += errors
        total_time += record.seconds
    suites.set("tests", str(total_tests))
    suites.set("failures", str(total_failures))
    suites.set("errors", str(total_errors))
    suites.set("time", f"{total_time:.3f}")
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def failure_report(record: StageRecord, limit: int = 12) -> str:
    """The lines a failed stage prints: the first says which image and how many failed."""
    failures = record.failures
    title = STAGE_TITLES.get(record.stage, record.stage)
    if record.error:
        return f"image '{record.image}': {title}: {record.error}"
    lines = [f"image '{record.image}': {len(failures)} of {len(record.checks)} {title} failed"]
    for check in failures[:limit]:
        lines.append(f"  FAIL {check.name}: {check.message}")
        if check.detail:
            lines.extend(f"       {line}" for line in check.detail.rstrip().splitlines()[-15:])
    if len(failures) > limit:
        lines.append(f"  … and {len(failures) - limit} more (see the JUnit report)")
    return "\n".join(lines)


def write_junit_reports(layout: CacheLayout, stages: Iterable[str], images: Collection[str]) -> dict[str, str]:
    """Remake `reports/junit-<stage>.xml` for each stage from the records of the
    current images (a removed image's old record is not reported)."""
    written = {}
    for stage in stages:
        path = layout.reports / f"junit-{stage}.xml"
        write_atomic(path, junit_xml(stage, load_records(layout, stage, images)))
        written[stage] = str(path)
    return written
