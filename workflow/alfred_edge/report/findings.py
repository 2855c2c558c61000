"""The findings at the top of the page: sentences made from the data that answer the questions
people bring (what fits each RAM budget, how cost grows with the batch, which variant is best
for what, what compression costs and buys, how the models compare), each with its numbers and
the figure it reads, or saying why a number is missing. One function per question, in
FINDINGS: a new question is one more function there."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from alfred_edge.report.tables import BACKEND, PROVIDER, fmt, pareto_front, variant_names
from alfred_edge.variants import COST_ONLY

BASELINE = "fp32"  # the trained model as it is (alfred_edge.variants): what every variant is compared with


@dataclass
class Finding:
    question: str
    figure: str  # the name of the figure the sentences read (html: figures[figure], anchor figure-<name>)
    sentences: list[str]


@dataclass
class Facts:
    """What the findings read: the ok cells of the main series (the most common value of each
    series column but the variant, e.g. features read memory-mapped) and all ok cells, the
    capacity rows, the eval tables and the RAM budgets; power reasons per host."""

    cells: pd.DataFrame
    all_ok: pd.DataFrame
    capacity: pd.DataFrame
    evals: pd.DataFrame
    budgets: pd.DataFrame
    power_reasons: dict

    def panels(self):
        """(host · device text, its cells) in host order."""
        yield from _panels(self.cells)

    def panels_all(self):
        """The same of all ok cells (the other series' named: "fp32 · ram")."""
        yield from _panels(self.all_ok)

    def accuracy(self, model: str, variant: str) -> tuple[float | None, str]:
        """(valid_seen accuracy in %, "accuracy …%"), or (None, "no accuracy (why)")."""
        rows = self.cells[(self.cells["model"] == model) & (self.cells["variant"] == variant)]
        values = rows["accuracy_valid_seen"].dropna()
        if len(values):
            return float(values.iloc[0]) * 100, f"accuracy {fmt(float(values.iloc[0]) * 100)} %"
        if "cost_only" in rows and rows["cost_only"].fillna(False).astype(bool).any():
            return None, f"no accuracy ({COST_ONLY})"
        if not self.evals.empty:
            evaluated = self.evals[(self.evals["model"] == model) & (self.evals["variant"] == variant)]
            if not evaluated.empty and evaluated["status"].iloc[0] != "ok":
                return None, f"no accuracy ({evaluated['status'].iloc[0]}: {evaluated['reason'].iloc[0]})"
        return None, "no accuracy (no eval table)"


def _panels(cells: pd.DataFrame):
    for (host, device), rows in cells.groupby(["host", "device"], sort=True):
        yield f"{host} · {device}", rows


def main_series(rows: pd.DataFrame, series: list[str]) -> pd.DataFrame:
    """The rows whose series columns but the variant hold their most common value, or none."""
    for column in series[1:]:
        if column in rows and rows[column].notna().any():
            # a row without the value (an older board's file lacks the column) is of the main series
            rows = rows[rows[column].eq(rows[column].mode().iloc[0]).fillna(True).astype(bool)]
    return rows


def other_series_named(rows: pd.DataFrame, series: list[str]) -> pd.DataFrame:
    """The rows with each value of a series column but the variant that is not the column's
    most common added to the variant's name ("fp32 · ram"), so that a sentence tells them apart."""
    names = rows["variant"].astype(str)
    for column in series[1:]:
        if column in rows and rows[column].notna().any():
            values = rows[column].astype(object)
            other = values.notna() & (values != values.mode().iloc[0])
            names = names.where(~other, names + " · " + values.astype(str))
    return rows.assign(variant=names)


def cell(rows: pd.DataFrame, model: str, variant: str, batch: int | None = None):
    """The row of (model, variant) at `batch` (default: 1), or None."""
    match = rows[(rows["model"] == model) & (rows["variant"] == variant) & (rows["batch_size"] == (batch or 1))]
    return None if match.empty else match.iloc[0]


def capacity(facts: Facts) -> Finding:
    sentences = []
    for where, rows in facts.panels():
        host, device = rows["host"].iloc[0], rows["device"].iloc[0]
        here = facts.capacity[(facts.capacity["host"] == host) & (facts.capacity["device"] == device)]
        for model in sorted(rows["model"].unique()):
            mine = here[here["model"] == model]
            if mine.empty:
                sentences.append(largest_batch_run(rows[rows["model"] == model], facts.budgets, model, where))
                continue
            budgets = mine.sort_values("budget_mb")["budget_name"].drop_duplicates()
            batches = sorted(set(rows.loc[rows["model"] == model, "batch_size"].dropna().astype(int)))
            sentences.append(f"{model} {BASELINE} on {where}, the largest batch under each budget: "
                             + ", ".join(budget_batches(mine, budget) for budget in budgets)
                             + f"; predicted by the line fitted to peak memory at batches {batches[0]}–{batches[-1]}.")
    return Finding("The largest batch under each RAM budget", "ram", sentences)


def largest_batch_run(rows: pd.DataFrame, budgets: pd.DataFrame, model: str, where: str) -> str:
    """Without capacity rows (a host measured by the standalone runner's cells alone): per
    budget, the largest batch run whose peak memory stayed within it."""
    line = rows[(rows["variant"] == BASELINE) & rows["peak_memory_mb"].notna()]
    budgets = budgets[budgets["host"] == rows["host"].iloc[0]]
    if line.empty or budgets.empty:
        return f"{model} on {where}: no capacity rows, and no peak memory of {BASELINE} or no RAM budget to compare."
    parts = [f"{budget.budget} {fmt(line.loc[line['peak_memory_mb'] <= budget.budget_mb, 'batch_size'].max())}"
             for budget in budgets.itertuples()]
    return (f"{model} {BASELINE} on {where} has no capacity rows; of the batches run (up to "
            f"{int(line['batch_size'].max())}), the largest within each budget: {', '.join(parts)}.")


# Why a capacity search stopped before a batch passed the budget (so the largest that fits may be larger).
STOPPED_EARLY = {"time_box": "time box (capacity.max_seconds)", "max_batch": "capacity.max_batch"}


def count(value) -> str:
    return f"{int(value):,}"


def budget_batches(rows: pd.DataFrame, budget: str) -> str:
    """One budget's largest batch for the baseline: predicted, measured where the capacity
    search ran, and the range the other variants' predictions span."""
    rows = rows[rows["budget_name"] == budget]
    predicted = rows["predicted_max_batch"].dropna().astype(int)
    if predicted.empty:
        return f"{budget} no prediction ({'; '.join(rows['error'].dropna().unique()) or 'no fit'})"
    base = rows[rows["variant"] == BASELINE]
    notes = []
    searched = base[base["measured"].fillna(False).astype(bool) & base["measured_max_batch"].notna()]
    if not searched.empty:
        reason = searched["measured_stop_reason"].iloc[0]
        early = STOPPED_EARLY.get(str(reason))
        notes.append(f"measured {'≥ ' if early else ''}{count(searched['measured_max_batch'].iloc[0])}"
                     + (f", the search stopped at its {early}" if early else ""))
    if predicted.min() != predicted.max():
        notes.append(f"variants {count(predicted.min())}–{count(predicted.max())}")
    value = base["predicted_max_batch"].dropna()
    return f"{budget} {count(value.iloc[0]) if len(value) else '–'}" + (f" ({'; '.join(notes)})" if notes else "")


def batch_scaling(facts: Facts) -> Finding:
    sentences = []
    for where, rows in facts.panels():
        for model in sorted(rows["model"].unique()):
            line = rows[(rows["model"] == model) & (rows["variant"] == BASELINE)].sort_values("batch_size")
            line = line[line["sample_latency_p50_ms"].notna()]
            if len(line) < 2:
                continue
            first, last = line.iloc[0], line.iloc[-1]
            b1, bn = int(first["batch_size"]), int(last["batch_size"])
            ratio = last["sample_latency_p50_ms"] / first["sample_latency_p50_ms"]
            text = (f"{model} {BASELINE} on {where}: {fmt(first['sample_latency_p50_ms'])} ms per sample at batch {b1}, "
                    f"{fmt(last['sample_latency_p50_ms'])} at batch {bn} ({ratio:.2f}×; "
                    f"{fmt(first['throughput_samples_per_s'])} → {fmt(last['throughput_samples_per_s'])} samples/s)")
            if pd.notna(first["energy_per_sample_j"]) and pd.notna(last["energy_per_sample_j"]):
                text += (f"; energy per sample {fmt(first['energy_per_sample_j'])} → {fmt(last['energy_per_sample_j'])} J, "
                         f"mean power {fmt(first['mean_power_w'])} → {fmt(last['mean_power_w'])} W")
            else:
                text += f"; energy not measured ({facts.power_reasons.get(first['host']) or 'no power readings'})"
            sentences.append(text + ".")
    return Finding(f"From batch 1 to the largest batch ({BASELINE})", "sample_latency", sentences)


def best_variants(facts: Facts) -> Finding:
    sentences = []
    for where, rows in facts.panels():
        batch1 = rows[rows["batch_size"] == 1]
        parts = []
        for goal, column, best, unit in (("fastest at batch 1", "sample_latency_p50_ms", "idxmin", "ms per sample"),
                                         ("highest throughput", "throughput_samples_per_s", "idxmax", "samples/s"),
                                         ("least memory at batch 1", "peak_memory_mb", "idxmin", "MB peak")):
            pool = (rows if column == "throughput_samples_per_s" else batch1).dropna(subset=[column])
            if not pool.empty:
                row = pool.loc[getattr(pool[column], best)()]
                batch = f" at batch {int(row['batch_size'])}" if column == "throughput_samples_per_s" else ""
                parts.append(f"{goal}: {row['model']} {row['variant']}{batch} ({fmt(row[column])} {unit})")
        scored = batch1.dropna(subset=["accuracy_valid_seen", "sample_latency_p50_ms"])
        if scored.empty:
            parts.append("most accurate: no accuracy for the cells at batch 1")
        else:
            row = scored.loc[scored["accuracy_valid_seen"].idxmax()]
            parts.append(f"most accurate: {row['model']} {row['variant']} ({fmt(row['accuracy_valid_seen'] * 100)} % "
                         f"on valid_seen); the best accuracy for the latency: "
                         + ", ".join(f"{r['model']} {r['variant']}" for _, r in pareto_front(scored).iterrows()))
        sentences.append(f"On {where}, " + "; ".join(parts) + ".")
    return Finding("The best variant for each goal", "accuracy", sentences)


def variants_against_baseline(facts: Facts) -> Finding:
    sentences = []
    for model in sorted(facts.cells["model"].unique()):
        base_accuracy, _ = facts.accuracy(model, BASELINE)
        for variant in sorted(set(facts.cells.loc[facts.cells["model"] == model, "variant"]) - {BASELINE}):
            accuracy, accuracy_text = facts.accuracy(model, variant)
            if accuracy is not None and base_accuracy is not None:
                accuracy_text += f" ({accuracy - base_accuracy:+.2f} points)"
            pairs = [(where, cell(rows, model, BASELINE), cell(rows, model, variant)) for where, rows in facts.panels()]
            pairs = [(where, base, other) for where, base, other in pairs if base is not None and other is not None]
            speeds = [f"{base['sample_latency_p50_ms'] / other['sample_latency_p50_ms']:.2f}× as fast on {where} "
                      f"({fmt(other['sample_latency_p50_ms'])} against {fmt(base['sample_latency_p50_ms'])} ms"
                      + (f"; the same action as {BASELINE} at {fmt(other['action_agreement_fp32'] * 100)} % of steps)"
                         if pd.notna(other.get("action_agreement_fp32")) else ")")
                      for where, base, other in pairs]
            text = f"{model} {variant} against {BASELINE}: {accuracy_text}"
            if pairs and pd.notna(pairs[0][2]["model_file_mb"]):
                base, other = pairs[0][1:]
                text += f", file {fmt(other['model_file_mb'])} MB ({other['model_file_mb'] / base['model_file_mb']:.2f}×)"
            sentences.append(f"{text}; per sample at batch 1, {'; '.join(speeds) or f'not run beside {BASELINE}'}.")
    return Finding(f"Compression against {BASELINE}: accuracy, speed and size", "accuracy", sentences)


def models_compared(facts: Facts) -> Finding:
    sentences = []
    for where, rows in facts.panels():
        models = sorted(rows["model"].unique())
        entries = [(model, cell(rows, model, BASELINE)) for model in models]
        entries = [(model, row) for model, row in entries if row is not None]
        if len(entries) < 2:
            continue
        fastest = min(entries, key=lambda entry: entry[1]["sample_latency_p50_ms"])
        parts = []
        for model, row in entries:
            ratio = row["sample_latency_p50_ms"] / fastest[1]["sample_latency_p50_ms"]
            slower = "" if model == fastest[0] else f" ({ratio:.2f}× {fastest[0]}'s)"
            parts.append(f"{model} {fmt(row['sample_latency_p50_ms'])} ms per sample{slower}, "
                         f"{fmt(row['peak_memory_mb'])} MB peak, {fmt(row['model_file_mb'])} MB file, "
                         f"{facts.accuracy(model, BASELINE)[1]}")
        sentences.append(f"On {where} at batch 1 ({BASELINE}): " + "; ".join(parts) + ".")
    return Finding("The models side by side", "sample_latency", sentences)


def measurement(facts: Facts) -> Finding:
    """How far the medians can be trusted: their 95 % intervals and the load of the host."""
    cells, sentences = facts.all_ok, []
    if "flag_ci_wide" in cells and cells["latency_p50_ci_half_width"].notna().any():
        timed = cells[cells["latency_p50_ci_half_width"].notna()]
        wide = timed[timed["flag_ci_wide"].fillna(False).astype(bool)]
        sentences.append(f"{len(timed) - len(wide)} of {len(timed)} cells have the p50's 95 % interval within their "
                         f"target; the widest is ±{timed['latency_p50_ci_half_width'].max() * 100:.1f} % of the p50"
                         + (f" ({', '.join(names(wide))})." if len(wide) else "."))
    if "flag_busy_host" in cells and cells["flag_busy_host"].notna().any():
        busy = cells[cells["flag_busy_host"].fillna(False).astype(bool)]
        sentences.append(f"{len(busy)} of {cells['flag_busy_host'].notna().sum()} cells were measured while other work "
                         "kept the host busy (other processes took more CPU than the cores the cell's threads leave free)"
                         + (f": {', '.join(names(busy))}; their latencies may be too high." if len(busy) else "."))
    sentences += [store_against_ram(where, rows) for where, rows in facts.panels_all()]
    return Finding("How far the numbers can be trusted", "latency", [s for s in sentences if s])


def store_against_ram(where: str, rows: pd.DataFrame) -> str | None:
    """The fp32 cells read from RAM ("fp32 · ram") against their memory-mapped twins: whether
    their p50 intervals overlap, and why they may not. Both timed loops decode the same float32
    batches, copied out of the store before the loop (bench.workloads.store_batches): the
    features setting changes the RAM a cell holds, not what its loop reads, so a difference
    beyond the intervals is the host's speed between the two cells, which neither cell's own
    interval covers."""
    parts = []
    if not {"latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms"} <= set(rows):
        return None
    for ram in rows[rows["variant"] == f"{BASELINE} · ram"].itertuples():
        store = cell(rows, ram.model, BASELINE, ram.batch_size)
        if store is None or pd.isna(ram.latency_p50_ci_low_ms) or pd.isna(store["latency_p50_ci_low_ms"]):
            continue
        agree = ram.latency_p50_ci_low_ms <= store["latency_p50_ci_high_ms"] and (
            store["latency_p50_ci_low_ms"] <= ram.latency_p50_ci_high_ms)
        parts.append(f"{ram.model} at batch {int(ram.batch_size)}: {fmt(ram.latency_p50_ms)} ms "
                     f"[{fmt(ram.latency_p50_ci_low_ms)}–{fmt(ram.latency_p50_ci_high_ms)}] from RAM against "
                     f"{fmt(store['latency_p50_ms'])} [{fmt(store['latency_p50_ci_low_ms'])}–"
                     f"{fmt(store['latency_p50_ci_high_ms'])}] from the store: "
                     + ("they agree within their intervals" if agree else "they differ beyond their intervals"))
    if not parts:
        return None
    return (f"On {where}, {BASELINE} with the frames read into RAM and from the memory-mapped store (both loops "
            "decode the same batches, copied out of the store before the loop: the setting changes the RAM a cell "
            "holds, so where they differ beyond their intervals it is the host's speed between the two cells, "
            "which a cell's own interval does not cover): " + "; ".join(parts) + ".")


def names(rows: pd.DataFrame, most: int = 8) -> list[str]:
    """The first `most` cells by name, and how many more."""
    listed = [f"{r.model} {r.variant} at batch {int(r.batch_size)} on {r.host} · {r.device}" for r in rows.head(most).itertuples()]
    return listed + ([f"{len(rows) - most} more"] if len(rows) > most else [])


FINDINGS = [capacity, batch_scaling, best_variants, variants_against_baseline, models_compared, measurement]


# The columns the findings read, taken before any row is; the optional ones where the table has them
# (an older board's files lack them).
CELL_COLUMNS = ["host", "device", "model", "variant", "batch_size", "sample_latency_p50_ms", "throughput_samples_per_s",
                "peak_memory_mb", "energy_per_sample_j", "mean_power_w", "model_file_mb", "accuracy_valid_seen"]
OPTIONAL_COLUMNS = ["cost_only", "action_agreement_fp32", "latency_p50_ci_half_width", "flag_ci_wide", "flag_busy_host",
                    "latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms"]
CAPACITY_COLUMNS = ["host", "device", "model", "variant", "budget_name", "budget_mb", "predicted_max_batch", "error",
                    "measured", "measured_max_batch", "measured_stop_reason"]


def named_evals(evals: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The eval rows named as the cells they hold for ("int8_dynamic · onnxruntime · cpu"): a
    variant is evaluated once per backend, and its accuracy (or why it has none) holds on every
    provider its cells ran on."""
    if evals.empty:
        return evals
    key = ["model", "variant", BACKEND]
    if PROVIDER in cells and set(key) <= set(cells):
        runs = cells[[*key, PROVIDER]].dropna(subset=key).drop_duplicates().astype({c: object for c in key})
        evals = evals.drop(columns=[PROVIDER], errors="ignore").astype({c: object for c in key})
        evals = evals.merge(runs, on=key, how="left")
    return evals.assign(variant=variant_names(evals))


def findings(cells: pd.DataFrame, series: list[str], capacity_rows: pd.DataFrame, evals: pd.DataFrame,
             budgets: pd.DataFrame, power_reasons: dict) -> list[Finding]:
    """Every question's finding that has a sentence. A variant on another backend than the
    default one is a variant of its own here ("fp32 · onnxruntime · cpu"), compared with fp32 as
    the others are."""
    series = [c for c in series if c not in (BACKEND, PROVIDER)]
    columns = dict.fromkeys(c for c in CELL_COLUMNS + OPTIONAL_COLUMNS + series if c in cells)
    named = cells.loc[cells["status"] == "ok"]
    all_ok = other_series_named(named[list(columns)].assign(variant=variant_names(named)), series)
    ok = main_series(all_ok, series)
    if ok.empty:
        return []
    evals = named_evals(evals, cells)
    facts = Facts(ok, all_ok, main_series(capacity_rows, series)[CAPACITY_COLUMNS], evals, budgets, power_reasons)
    return [finding for finding in (question(facts) for question in FINDINGS) if finding.sentences]
