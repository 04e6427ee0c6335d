#!/usr/bin/env python3
"""Convert every Sigma rule in sigma/ and sigma-sysmon/ with each SIEM's pySigma backend.

    convert.py            regenerate deploy/siem/<backend>/ (checked in)
    convert.py --check    regenerate into a temporary directory and fail, with a diff, when
                          the checked-in queries differ (the drift test runs this)

Run it with the Python of the project's virtual environment (`cargo xtask siem` makes it and
runs this script); requirements.txt pins pySigma and the backends.
"""

import argparse
import difflib
import json
import re
import sys
import tempfile
from pathlib import Path

from sigma.backends.crowdstrike import LogScaleBackend
from sigma.backends.QRadarAQL import QRadarAQLBackend
from sigma.backends.secops import SecOpsBackend
from sigma.backends.splunk import SplunkBackend
from sigma.backends.sumologic import SumoLogicCSEBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionNOT
from sigma.exceptions import SigmaError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import t1571_pipelines as pipelines  # noqa: E402

RULE_SETS = {"sigma": "", "sigma-sysmon": "sysmon"}


class SecOpsBackendFixed(SecOpsBackend):
    """pySigma-backend-secops 1.0.0 with its negation and value lists made correct.

    The backend negates by swapping in `!=` expressions, which exist only for strings, and
    decides that from the condition tree's parent: `not` before a number, a comparison, a
    CIDR or a null test is dropped (`not port 8080` became `target.port = 8080`), a negated
    list of suffixes loses its `$` anchor, and a list of numbers becomes an unanchored regex
    (`target.port = /444|4444/` also matches 8444). Here every expression is converted plainly
    and negation is a NOT around it (UDM search and YARA-L both have it); lists are ORs."""

    def convert_condition(self, cond, state, parent_cond=None):
        return super().convert_condition(cond, state, parent_cond=None)

    def decide_convert_condition_as_in_expression(self, cond, state):
        return False

    def convert_condition_not(self, cond: ConditionNOT, state):
        return f"{self.not_token} {self.convert_condition_group(cond.args[0], state)}"


class LogScaleBackendQuotedCIDR(LogScaleBackend):
    """pySigma-backend-crowdstrike 3.0.0 writes `cidr(field, subnet=10.0.0.0/8)`: unquoted, the
    `/` opens a regex in LogScale's query language. Quote the subnet."""

    cidr_expression = '"{value}"'


class SumoLogicCSEBackendGroupedCIDR(SumoLogicCSEBackend):
    """pySigma-backend-sumologic 0.2.5 has no CIDR operator: pySigma expands a range into an OR
    of prefix regexes, which the backend negates without parentheses (`!a OR b OR c` for
    `not 172.16.0.0/12`). Group the expansion."""

    def convert_condition_field_eq_val_cidr(self, cond, state):
        expr = super().convert_condition_field_eq_val_cidr(cond, state)
        return self.group_expression.format(expr=expr)


# name: (output directory, file extension, backend factory(pipeline), output format,
#        ECS pipeline factory)
BACKENDS = {
    "splunk": (
        "splunk",
        "spl",
        lambda p: SplunkBackend(p),
        "default",
        pipelines.splunk_pipeline,
    ),
    "sumologic": (
        "sumologic",
        "json",
        lambda p: SumoLogicCSEBackendGroupedCIDR(p),
        "default",
        pipelines.sumologic_pipeline,
    ),
    "crowdstrike": (
        "crowdstrike",
        "logscale",
        lambda p: LogScaleBackendQuotedCIDR(p),
        "default",
        pipelines.logscale_pipeline,
    ),
    "secops": (
        "secops",
        "udm",
        lambda p: SecOpsBackendFixed(p),
        "default",
        pipelines.secops_pipeline,
    ),
    "secops-yara-l": (
        "secops",
        "yaral",
        lambda p: SecOpsBackendFixed(p),
        "yara_l",
        pipelines.secops_pipeline,
    ),
    "qradar": (
        "qradar",
        "aql",
        lambda p: QRadarAQLBackend(p),
        "default",
        pipelines.qradar_pipeline,
    ),
}


def stable(backend: str, text: str) -> str:
    """Drop what changes from run to run, so the files only change with the rules."""
    if backend == "sumologic":
        doc = json.loads(text)
        for rule in doc.get("rules", [doc]):
            meta = rule.get("conversion_metadata", {})
            # The time of conversion and the git commit of the rule file.
            meta.pop("conversion_timestamp", None)
            meta.pop("sigma_rule_commit", None)
        return json.dumps(doc, indent=2, sort_keys=True)
    return text.strip()


def output_name(path: Path, rule, count: int) -> str:
    # A collection (one file, one rule per level) gets the level in each output's name.
    return path.stem if count == 1 else f"{path.stem}_{rule.level.name.lower()}"


def convert_all(out_root: Path) -> list[str]:
    """Writes every conversion under out_root; returns the problems (a rule a backend refused)."""
    problems = []
    for rule_dir, sub in RULE_SETS.items():
        for path in sorted((HERE / rule_dir).glob("*.yml")):
            for name, (directory, ext, make, fmt, ecs_pipeline) in BACKENDS.items():
                # Pipelines keep state per rule: a fresh collection and pipeline each time.
                rules = SigmaCollection.load_ruleset([path])
                backend_name = "secops" if name.startswith("secops") else name
                if sub:
                    pipeline = pipelines.sysmon_pipeline(backend_name)
                else:
                    pipeline = ecs_pipeline()
                backend = make(pipeline) if pipeline is not None else make(None)
                try:
                    outputs = [backend.convert_rule(rule, fmt) for rule in rules.rules]
                except Exception as e:  # noqa: BLE001 (backends raise anything, e.g. AttributeError)
                    # A backend that cannot express a rule says so here; it is reported, and
                    # the drift test fails on it.
                    problems.append(f"{rule_dir}/{path.name} -> {name}: {type(e).__name__}: {e}")
                    continue
                for rule, queries in zip(rules.rules, outputs):
                    target = out_root / directory / sub / f"{output_name(path, rule, len(rules.rules))}.{ext}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    text = "\n".join(stable(backend_name, str(q)) for q in queries)
                    target.write_text(text + "\n")
    return problems


# pySigma's validators that download MITRE ATT&CK / D3FEND data: they cannot run offline.
ONLINE_VALIDATORS = {"attacktag", "d3_fendtag"}


def validate() -> list[str]:
    """Every offline pySigma validator over every rule (what `sigma check` does, less the
    ATT&CK and D3FEND tag lists, which it downloads)."""
    from sigma.plugins import InstalledSigmaPlugins
    from sigma.validation import SigmaValidator

    validators = InstalledSigmaPlugins.autodiscover().validators
    rules = SigmaCollection.load_ruleset([HERE / d for d in RULE_SETS])
    checks = [v for name, v in sorted(validators.items()) if name not in ONLINE_VALIDATORS]
    return [
        f"{type(issue).__name__}: {', '.join(str(r.source or r.title) for r in issue.rules)}: {issue.description}"
        for issue in SigmaValidator(checks).validate_rules(rules)
    ]


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for d in {b[0] for b in BACKENDS.values()}
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when the checked-in queries drift")
    args = ap.parse_args()
    issues = validate()
    for i in issues:
        print(f"rule issue: {i}", file=sys.stderr)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            problems = convert_all(Path(tmp))
            fresh, current = tree(Path(tmp)), tree(HERE)
        drift = []
        for name in sorted(set(fresh) | set(current)):
            if name not in current:
                drift.append(f"missing from deploy/siem: {name}")
            elif name not in fresh:
                drift.append(f"no rule produces deploy/siem/{name} any more")
            elif fresh[name] != current[name]:
                drift.append("".join(difflib.unified_diff(
                    current[name].splitlines(True), fresh[name].splitlines(True),
                    f"deploy/siem/{name} (checked in)", f"{name} (regenerated)")))
        for p in problems:
            print(f"conversion failed: {p}", file=sys.stderr)
        for d in drift:
            print(d, file=sys.stderr)
        if drift:
            print("the converted queries drifted from the rules: run `cargo xtask siem`", file=sys.stderr)
        n = len(fresh)
        print(
            f"checked {n} converted queries: {len(drift)} drifted, {len(problems)} conversions failed, "
            f"{len(issues)} rule issues"
        )
        return 1 if drift or problems or issues else 0
    for d in {b[0] for b in BACKENDS.values()}:
        for p in sorted((HERE / d).rglob("*"), reverse=True):
            if p.is_file():
                p.unlink()
    problems = convert_all(HERE)
    for p in problems:
        print(f"conversion failed: {p}", file=sys.stderr)
    print(f"wrote {len(tree(HERE))} converted queries under {HERE}")
    return 1 if problems or issues else 0


if __name__ == "__main__":
    sys.exit(main())
