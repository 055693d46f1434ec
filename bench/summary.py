"""The issue's targets against a report, the ratios to etcd and OpenBao, and bench/RESULTS.md.

Peers side by side (all from one run): failover and acknowledged writes against etcd and
OpenBao; 1 KiB encrypt/decrypt of raftsso's in-process client (``encryption``) and of the
agent (``agent``, when that scenario exists) against OpenBao's transit engine. The agent
slot reads ``results["agent"]`` with the keys of ``results["openbao"]["transit"]``:
``{"encrypt_sequential": {"per_s", "p50_s"}, "encrypt_concurrent": {"per_s", "clients"},
"decrypt_sequential": ..., "decrypt_concurrent": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:results:begin (written by python -m bench; edit outside the markers) -->"
END = "<!-- bench:results:end -->"


def _get(report: dict[str, Any], *path: str) -> Any:
    node: Any = report.get("results", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _ms(x: Any) -> str:
    return f"{x * 1000:.1f} ms" if _num(x) else "-"


def _ops(x: Any) -> str:
    return f"{x:,.0f}" if _num(x) else "-"


def comparisons(report: dict[str, Any]) -> dict[str, Any]:
    """raftsso / etcd ratios from the same run (None where either side is missing)."""
    out: dict[str, Any] = {}
    etcd_ack = _get(report, "etcd", "ack_write_s", "median")
    etcd_leader = _get(report, "etcd", "new_leader_s", "median")
    etcd_put = _get(report, "etcd", "sequential_put_s", "median")
    r_ack = _get(report, "failover", "sigkill", "ack_rotate_s", "median")
    r_leader = _get(report, "failover", "sigkill", "new_leader_s", "median")
    r_rot = _get(report, "rotation", "sequential", "p50_s")
    if _num(etcd_ack) and _num(r_ack):
        out["failover_ack_median_ratio"] = r_ack / etcd_ack
    if _num(etcd_leader) and _num(r_leader):
        out["failover_new_leader_median_ratio"] = r_leader / etcd_leader
    if _num(etcd_put) and _num(r_rot):
        out["sequential_write_p50_ratio"] = r_rot / etcd_put
    # OpenBao: times are raftsso / OpenBao (below 1: raftsso faster), rates too (above 1:
    # raftsso faster).
    for timing in ("default", "multiplier_1"):
        bao_ack = _get(report, "openbao", "failover", timing, "ack_write_s", "median")
        if _num(bao_ack) and _num(r_ack):
            out[f"openbao_{timing}_failover_ack_median_ratio"] = r_ack / bao_ack
    bao_rot = _get(report, "openbao", "transit", "rotate_sequential", "p50_s")
    if _num(bao_rot) and _num(r_rot):
        out["openbao_rotate_p50_ratio"] = r_rot / bao_rot
    for op in ("encrypt", "decrypt"):
        for mode in ("sequential", "concurrent"):
            bao = _get(report, "openbao", "transit", f"{op}_{mode}", "per_s")
            client = _get(report, "encryption", "1 KiB", f"client_{op}")
            agent = _get(report, "agent", f"{op}_{mode}", "per_s")
            if _num(bao) and bao > 0:
                if _num(client):
                    out[f"openbao_transit_{op}_{mode}_client_rate_ratio"] = client / bao
                if _num(agent):
                    out[f"openbao_transit_{op}_{mode}_agent_rate_ratio"] = agent / bao
    return out


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met, scenario) rows; met is yes / NO / n/a."""
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, measured: str, ok: bool | None, scenario: str) -> None:
        rows.append((name, measured, "n/a" if ok is None else ("yes" if ok else "NO"),
                     scenario))

    k = _get(report, "failover", "sigkill")
    if k:
        a = k["ack_rotate_s"]
        row("failover SIGKILL: median <= 0.5 s", _ms(a.get("median")),
            a.get("median", 9) <= 0.5, "failover")
        row("failover SIGKILL: p99 <= 1.0 s", _ms(a.get("p99")), a.get("p99", 9) <= 1.0,
            "failover")
        row("failover SIGKILL: no trial over 2 s",
            f"{k['over_2s']} of {k['trials']} (max {_ms(a.get('max'))})", k["over_2s"] == 0,
            "failover")
        ratio = comparisons(report).get("failover_ack_median_ratio")
        etcd_ack = _get(report, "etcd", "ack_write_s", "median")
        row("failover SIGKILL median <= half of etcd's",
            f"{ratio:.2f} x etcd ({_ms(etcd_ack)})" if ratio is not None
            else "etcd not measured", None if ratio is None else ratio <= 0.5, "failover/etcd")
        s = _get(report, "failover", "sigstop") or {}
        failed = k["failed_client_ops"] + s.get("failed_client_ops", 0)
        ops = k["client_ops"] + s.get("client_ops", 0)
        row("zero client encrypt/decrypt failures in any failover trial",
            f"{failed} failed of {ops + failed} (SIGKILL {k['failed_client_ops']}, "
            f"SIGSTOP {s.get('failed_client_ops', '-')})", failed == 0, "failover")
    load = _get(report, "load")
    if load:
        best = load["max_sustained_per_s"]
        row(">= 2,000 keyring fetches/s from one node", f"{best:,.0f}/s sustained "
            f"(max achieved {load['max_achieved_per_s']:,.0f}/s)", best >= 2000, "load")
        p99 = load.get("p99_at_1000_s")
        row("keyring fetch p99 < 50 ms at 1,000/s", _ms(p99),
            None if p99 is None else p99 < 0.05, "load")
    rot = _get(report, "rotation", "sequential")
    if rot:
        row("acknowledged rotate p50 <= 5 ms (fsync)", _ms(rot["p50_s"]),
            rot["p50_s"] <= 0.005, "rotation")
    _issue16_raft_targets(report, row)
    enc = _get(report, "encryption", "1 KiB")
    if enc:
        for op in ("encrypt", "decrypt"):
            floor = enc.get(f"{op}_floor_ratio")
            row(f"{op} at 1 KiB >= 80% of raw AESGCM", f"{enc[f'{op}_ratio']:.0%} "
                f"({enc[f'client_{op}']:,.0f} vs {enc[f'raw_{op}']:,.0f} ops/s"
                + (f"; the format's Python floor {floor:.0%})" if floor else ")"),
                enc[f"{op}_ratio"] >= 0.8, "encryption")
    rw = _get(report, "rewrap") or {}
    # Reports from before the PostgreSQL store hold one SQLite figure at the top level.
    backends = rw.get("backends") or ({"sqlite": {**rw, "rows": rw["config"]["rows"],
                                                  "target_rows_per_s": 20000}} if rw else {})
    for kind, r in backends.items():
        if r.get("skipped"):
            continue
        row(f"rewrap {kind} >= {r['target_rows_per_s']:,} rows/s",
            f"{r['rows_per_s']:,.0f} rows/s ({r['rows']:,} rows in {r['seconds']:.2f} s)",
            r["rows_per_s"] >= r["target_rows_per_s"], "rewrap")
    return rows


def _issue16_raft_targets(report: dict[str, Any],
                          row: Callable[[str, str, bool | None, str], None]) -> None:
    """Issue 16, items 2 and 4: failover, spurious elections, the write path."""
    for kind in ("sigkill", "sigstop"):
        k = _get(report, "failover", kind)
        if k:
            a = k["ack_rotate_s"]
            row(f"failover {kind.upper()}: median <= 250 ms, p99 <= 500 ms (issue 16)",
                f"{_ms(a.get('median'))} / {_ms(a.get('p99'))}",
                a.get("median", 9) <= 0.25 and a.get("p99", 9) <= 0.5, "failover")
    spurious = [(name, x["elections"]) for name, x in (
        ("idle", _get(report, "idle")), ("load", _get(report, "load", "elections")),
        ("failover load", _get(report, "failover", "load_without_failures")))
        if x and x.get("elections") is not None]
    if spurious:
        row("no spurious elections (idle, load) (issue 16)",
            ", ".join(f"{n} {e}" for n, e in spurious),
            all(e == 0 for _, e in spurious), "idle/load/failover")
    rot = _get(report, "rotation", "sequential")
    if rot:
        row("acknowledged rotate p50 <= 2.5 ms (issue 16)", _ms(rot["p50_s"]),
            rot["p50_s"] <= 0.0025, "rotation")
    c = _get(report, "commits", "concurrent")
    if c:
        row(">= 400 concurrent commits/s with 8 writers (issue 16)",
            f"{c['commits_per_s']:,.0f}/s Raft ({c['leader_entries_per_fsync']:.1f} entries "
            "per leader fsync)", c["commits_per_s"] >= 400, "commits")


def print_targets(report: dict[str, Any]) -> None:
    rows = targets(report)
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\ntargets (issue 6; measured, never asserted)")
    for r in rows:
        print(f"  {r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
    comp = comparisons(report)
    if comp:
        print("raftsso / peer, same run: " + ", ".join(f"{k} {v:.2f}" for k, v in comp.items()))


def _scenario_tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    f = _get(report, "failover")
    if f:
        lines += ["### Failover", "",
                  f"{f['config']['trials_per_signal']} trials per signal, "
                  f"{f['config']['clients']} SSO clients (resync "
                  f"{f['config']['client_resync_interval_s']} s) encrypting and decrypting "
                  "throughout.", "",
                  "| signal | time to | median | p90 | p99 | max | failed client ops |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for kind in ("sigkill", "sigstop"):
            e = f.get(kind)
            if not e:
                continue
            for metric, label in (("new_leader_s", "new leader"),
                                  ("ack_rotate_s", "first acknowledged rotate")):
                s = e[metric]
                lines.append(f"| {kind.upper()} | {label} | {_ms(s.get('median'))} | "
                             f"{_ms(s.get('p90'))} | {_ms(s.get('p99'))} | "
                             f"{_ms(s.get('max'))} | {e['failed_client_ops']} of "
                             f"{e['client_ops'] + e['failed_client_ops']:,} |")
        def slow(kind: str) -> str:
            x = f[kind]["slowest_client_op_s"]
            return _ms(x) if x else "none over 50 ms"

        lines += ["", f"Slowest single client operation: SIGKILL {slow('sigkill')}, SIGSTOP "
                  f"{slow('sigstop')}; largest "
                  f"client sync age: SIGKILL {_ms(f['sigkill']['max_client_sync_age_s'])}, "
                  f"SIGSTOP {_ms(f['sigstop']['max_client_sync_age_s'])}.", ""]
    e = _get(report, "etcd")
    if e and not e.get("skipped"):
        lines += [f"### etcd {e['config']['version']} (3 members, default timings, "
                  "same machine, same run)", "",
                  "| measure | median | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
        for key, label in (("new_leader_s", "SIGKILL leader -> new leader"),
                           ("ack_write_s", "SIGKILL leader -> first acknowledged put"),
                           ("sequential_put_s", "sequential put (one client)")):
            s = e[key]
            lines.append(f"| {label} | {_ms(s.get('median'))} | {_ms(s.get('p90'))} | "
                         f"{_ms(s.get('p99'))} | {_ms(s.get('max'))} |")
        comp = comparisons(report)
        lines += ["", "raftsso / etcd: " + ", ".join(f"{k.replace('_', ' ')} **{v:.2f}**"
                                                     for k, v in comp.items()), ""]
    elif e:
        lines += ["### etcd", "", e.get("note", "skipped"), ""]
    lines += _peer_tables(report)
    ld = _get(report, "load")
    if ld:
        c = ld["clients"]
        lines += ["### Client load (keyring fetches from node1)", "",
                  f"Clients: {c['connected']:,} simulated clients, each with its own mTLS "
                  f"connection (opened in {c['connect_s']:.1f} s, "
                  f"{c['handshakes_per_s']:.0f} handshakes/s), resync "
                  f"{ld['config']['client_interval_s']:g} s +/-10 %: "
                  f"{c['achieved_per_s']:.0f} fetches/s, p50 {_ms(c['p50_s'])}, p99 "
                  f"{_ms(c['p99_s'])}, {c['errors'] + c['connect_errors']} errors; node CPU "
                  f"{c['node_cpu']:.2f} core, RSS {c['node_rss_mib_before']:.0f} MiB idle -> "
                  f"{c['node_rss_mib_connected']:.0f} MiB with the connections open.", "",
                  f"Ramp (measured first, on the fresh node; {ld['config']['ramp_pool']}):",
                  "",
                  "| offered/s | done/s | p50 | p99 | node CPU | generator CPU | machine CPU "
                  "| generator lag p99 | sustained |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for s in ld["ramp"]:
            lines.append(f"| {s['offered_per_s']:,} | {s['achieved_per_s']:,.0f} | "
                         f"{_ms(s['p50_s'])} | {_ms(s['p99_s'])} | {s['node_cpu']:.2f} | "
                         f"{s['generator_cpu_proc']:.2f} | {s.get('machine_cpu', 0):.2f} | "
                         f"{_ms(s['generator_lag_p99_s'])} | "
                         f"{'yes' if s['sustained'] else 'no'} |")
        sat = ld.get("saturation") or {}
        if sat:
            lines += ["", f"Closed loop ({sat['connections']} connections back to back): "
                      f"**{sat['achieved_per_s']:,.0f}/s**, p50 {_ms(sat['p50_s'])}, p99 "
                      f"{_ms(sat['p99_s'])}; node CPU {sat['node_cpu']:.2f}, generator "
                      f"{sat['generator_cpu_proc']:.2f}, machine {sat['machine_cpu']:.2f} "
                      "cores."]
        lines += ["", f"Highest sustained: **{ld['max_sustained_per_s']:,.0f}/s**. "
                  f"Limit: {ld['limit']}.", ""]
    r = _get(report, "rotation")
    if r:
        s, c, g = r["sequential"], r["concurrent"], r["keyring_growth"]
        w = r["rotate_now_with_clients"]
        lines += ["### Rotation", "",
                  f"Sequential (n={s['n']}): p50 {_ms(s['p50_s'])}, p90 {_ms(s['p90_s'])}, "
                  f"p99 {_ms(s['p99_s'])}, max {_ms(s['max_s'])} (first tenth p50 "
                  f"{_ms(s['first_tenth_p50_s'])}, last tenth {_ms(s['last_tenth_p50_s'])}). "
                  f"Concurrent ({c['threads']} threads): {c['commits_per_s']:.0f} commits/s, "
                  f"{c['errors']} errors.", "",
                  f"Keyring growth: {g['versions_before']} -> {g['versions_after_sequential']} "
                  f"versions, answer {g['answer_bytes_before']:,} -> "
                  f"{g['answer_bytes_after_sequential']:,} bytes "
                  f"({g['bytes_per_version']:.0f} B per version), fetch p50 "
                  f"{_ms(g['fetch_p50_s_before'])} -> {_ms(g['fetch_p50_s_after'])}.", "",
                  f"`rotate --now` x{w['rotations']} with 4 SSO clients running: "
                  f"**{w['failed_ops']}** failed client operations of "
                  f"{w['ok_ops'] + w['failed_ops']:,}"
                  + (f" (e.g. `{w['failures'][0]}`)" if w["failures"] else "") + ".", ""]
    cm = _get(report, "commits")
    if cm:
        s, c = cm["sequential"], cm["concurrent"]
        lines += ["### Raft commits (the write path alone)", "",
                  f"Sequential (n={s['n']}): p50 {_ms(s['p50_s'])}, p90 {_ms(s['p90_s'])}, "
                  f"p99 {_ms(s['p99_s'])}; leader CPU {s['leader_cpu_ms_per_commit']:.2f} ms "
                  f"per commit. {c['threads']} writers: **{c['commits_per_s']:,.0f} "
                  f"commits/s**, {c['leader_entries_per_fsync']:.1f} entries per leader "
                  f"fsync, {c['errors']} errors.", ""]
    idle = _get(report, "idle")
    if idle:
        lines += [f"Idle cluster, {idle['seconds']:.0f} s: {idle['elections']} elections, "
                  f"{idle['leader_changes']} leader changes.", ""]
    enc = _get(report, "encryption")
    if enc:
        lines += ["### Encryption (ops/s, one thread)", "",
                  "Floor: the same token made (opened) by the least inline Python, no checks "
                  "(bench/encryption.py).", "",
                  "| size | raw AESGCM enc | raw + urandom nonce | floor enc | SSOClient enc | "
                  "ratio | raw dec | floor dec | SSOClient dec | ratio |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label in ("64 B", "1 KiB", "64 KiB"):
            x = enc.get(label)
            if x:
                lines.append(f"| {label} | {x['raw_encrypt']:,.0f} | "
                             f"{x['raw_nonce_encrypt']:,.0f} | {_ops(x.get('floor_encrypt'))} | "
                             f"{x['client_encrypt']:,.0f} | {x['encrypt_ratio']:.0%} | "
                             f"{x['raw_decrypt']:,.0f} | {_ops(x.get('floor_decrypt'))} | "
                             f"{x['client_decrypt']:,.0f} | {x['decrypt_ratio']:.0%} |")
        lines.append("")
    rw = _get(report, "rewrap")
    if rw:
        extra = (f"; {rw['rows_per_s_without_startup']:,.0f} rows/s less the "
                 f"{rw['noop_run_s']:.2f} s of an empty run"
                 if rw.get("rows_per_s_without_startup") else "")
        lines += ["### Rewrap", "",
                  f"{rw['config']['rows']:,} rows: {rw['seconds']:.2f} s for the `raftsso "
                  f"rewrap` process, **{rw['rows_per_s']:,.0f} rows/s**{extra}.", ""]
        for kind, r in (rw.get("backends") or {}).items():
            if not r.get("skipped"):
                lines += [f"- {kind}: {r['rows_per_s']:,.0f} rows/s; `cred get` p50 "
                          f"{r['cred_get']['p50_s'] * 1e3:.3f} ms, p99 "
                          f"{r['cred_get']['p99_s'] * 1e3:.3f} ms"]
        lines += [""] if rw.get("backends") else []
    return lines


def _rate(x: Any) -> str:
    return f"{x:,.0f}/s" if _num(x) else "-"


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}" if _num(a) and _num(b) and b else "-"


def _peer_tables(report: dict[str, Any]) -> list[str]:
    """raftsso beside etcd and OpenBao, from one run; '-' where a side was not measured."""
    bao = _get(report, "openbao")
    if not bao:
        return []
    if bao.get("skipped"):
        return ["### OpenBao", "", bao.get("note", "skipped"), ""]
    lines: list[str] = []
    fo = bao["failover"]
    d, m1 = fo["default"], fo["multiplier_1"]
    r_ack = _get(report, "failover", "sigkill", "ack_rotate_s") or {}
    e_ack = _get(report, "etcd", "ack_write_s") or {}
    r_rot = _get(report, "rotation", "sequential", "p50_s")
    e_put = _get(report, "etcd", "sequential_put_s", "median")
    b_rot = bao["transit"]["rotate_sequential"]["p50_s"]
    lines += [f"### raftsso beside etcd and OpenBao {bao['config']['version']} (same run)", "",
              "Failover: SIGKILL of the leader (OpenBao: the active node) to the first "
              "acknowledged write (raftsso rotate, etcd put, OpenBao transit key rotate). "
              "Ratios are raftsso / peer: below 1, raftsso is faster.", "",
              "| measure | raftsso | etcd | OpenBao default | OpenBao multiplier 1 | "
              "/ etcd | / OpenBao default | / OpenBao x1 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in (("median", "failover median"), ("p90", "failover p90"),
                       ("max", "failover max")):
        r, e = r_ack.get(key), e_ack.get(key)
        bd, bm = d["ack_write_s"].get(key), m1["ack_write_s"].get(key)
        lines.append(f"| {label} | {_ms(r)} | {_ms(e)} | {_ms(bd)} | {_ms(bm)} | "
                     f"{_ratio(r, e)} | {_ratio(r, bd)} | {_ratio(r, bm)} |")
    lines.append(f"| acknowledged write, sequential p50 | {_ms(r_rot)} | {_ms(e_put)} | "
                 f"{_ms(b_rot)} | | {_ratio(r_rot, e_put)} | {_ratio(r_rot, b_rot)} | |")
    def failed(f: dict[str, Any]) -> str:
        by = ", ".join(f"{k} {v:,}" for k, v in (f.get("failed_by_status") or {}).items())
        return f"{f['failed_writes']:,}" + (f" ({by})" if by else "")

    lines += ["", f"OpenBao failover trials: {d['trials']} per timing, default / multiplier 1 "
              f"(heartbeat timeout {d['heartbeat_s']:g} s / {m1['heartbeat_s']:g} s); "
              "failed writes while electing (any answer but 2xx, by status, 307 to the dead "
              f"node included and not followed; 'error': no answer): {failed(d)} / "
              f"{failed(m1)}; new active node median {_ms(d['new_active_s'].get('median'))} / "
              f"{_ms(m1['new_active_s'].get('median'))}.", ""]
    t = bao["transit"]
    agent = _get(report, "agent") or {}
    lines += ["Encryption of 1 KiB: raftsso's in-process client (one thread, from "
              "`encryption`), the raftsso agent (when measured) and OpenBao transit over "
              f"HTTP keep-alive, sequential and {t['clients']} clients. Ratios are "
              "raftsso / OpenBao: above 1, raftsso is faster.", "",
              "| op | raftsso client | raftsso agent | raftsso agent, "
              f"{t['clients']} clients | OpenBao transit | OpenBao transit, {t['clients']} "
              "clients | client / transit | agent / transit |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for op in ("encrypt", "decrypt"):
        client = _get(report, "encryption", "1 KiB", f"client_{op}")
        a_seq = (agent.get(f"{op}_sequential") or {}).get("per_s")
        a_con = (agent.get(f"{op}_concurrent") or {}).get("per_s")
        b_seq, b_con = t[f"{op}_sequential"]["per_s"], t[f"{op}_concurrent"]["per_s"]
        lines.append(f"| {op} | {_rate(client)} | {_rate(a_seq)} | {_rate(a_con)} | "
                     f"{_rate(b_seq)} | {_rate(b_con)} | {_ratio(client, b_seq)} | "
                     f"{_ratio(a_seq, b_seq)} |")
    lines += ["", f"OpenBao transit, sequential p50: encrypt "
              f"{_ms(t['encrypt_sequential']['p50_s'])}, decrypt "
              f"{_ms(t['decrypt_sequential']['p50_s'])}; key rotate p50 {_ms(b_rot)}, p99 "
              f"{_ms(t['rotate_sequential']['p99_s'])}; the {t['clients']}-client load "
              f"generator used {t['encrypt_concurrent']['generator_cpu']:.2f} core.", ""]
    return lines


def markdown(report: dict[str, Any], png: str | None) -> str:
    m = report["machine"]
    lines = [BEGIN, "",
             f"Run {report['started']} at commit `{report['commit']}` on {m['platform']}, "
             f"{m['cpus']} CPUs ({m.get('cpu_model', '?')}), {m.get('memory_gib', '?')} GiB, "
             f"Python {m['python']}; `python -m bench` took "
             f"{report.get('elapsed_s', 0):.0f} s. Load average (1/5/15 min) at start "
             f"{m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}.", "",
             "| target (issue 6) | measured | met | scenario |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(report)]
    lines.append("")
    if png:
        lines += [f"![failover timeline and latency CDFs]({png})", ""]
    lines += _scenario_tables(report)
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_results_md(path: Path, report: dict[str, Any], png: str | None) -> None:
    """Replace the generated part of RESULTS.md, keeping everything outside the markers."""
    block = markdown(report, png)
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + block.rstrip("\n") + tail)
            return
    path.write_text("# Benchmark results\n\nThe latest full run of `python -m bench` "
                    "(`./dev bench`); the tables between the markers are regenerated by "
                    "every full run.\n\n" + block + "\n## Analysis\n\n(to be written)\n")
