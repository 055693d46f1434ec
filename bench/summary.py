"""bench/RESULTS.md from a report: the targets table, then a section per scenario.

The targets are bench/targets.py's (issue 6, and issue 16 by item); the ratios are
bench/report.py's. Peers side by side (all from one run): failover and acknowledged writes
against etcd and OpenBao; 1 KiB encrypt/decrypt of raftsso's in-process client
(``encryption``) and of the agent (``agent``: 1 and 8 clients) against OpenBao's transit
engine (1 and 8 clients).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import agent_rate, comparisons, fmt_ms, fmt_ops, fmt_rate, fmt_ratio, get
from bench.targets import targets

BEGIN = "<!-- bench:results:begin (written by python -m bench; edit outside the markers) -->"
END = "<!-- bench:results:end -->"


def _scenario_tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    f = get(report, "failover")
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
                lines.append(f"| {kind.upper()} | {label} | {fmt_ms(s.get('median'))} | "
                             f"{fmt_ms(s.get('p90'))} | {fmt_ms(s.get('p99'))} | "
                             f"{fmt_ms(s.get('max'))} | {e['failed_client_ops']} of "
                             f"{e['client_ops'] + e['failed_client_ops']:,} |")
        def slow(kind: str) -> str:
            x = f[kind]["slowest_client_op_s"]
            return fmt_ms(x) if x else "none over 50 ms"

        lines += ["", f"Slowest single client operation: SIGKILL {slow('sigkill')}, SIGSTOP "
                  f"{slow('sigstop')}; largest "
                  f"client sync age: SIGKILL {fmt_ms(f['sigkill']['max_client_sync_age_s'])}, "
                  f"SIGSTOP {fmt_ms(f['sigstop']['max_client_sync_age_s'])}.", ""]
    e = get(report, "etcd")
    if e and not e.get("skipped"):
        lines += [f"### etcd {e['config']['version']} (3 members, default timings, "
                  "same machine, same run)", "",
                  "| measure | median | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
        for key, label in (("new_leader_s", "SIGKILL leader -> new leader"),
                           ("ack_write_s", "SIGKILL leader -> first acknowledged put"),
                           ("sequential_put_s", "sequential put (one client)")):
            s = e[key]
            lines.append(f"| {label} | {fmt_ms(s.get('median'))} | {fmt_ms(s.get('p90'))} | "
                         f"{fmt_ms(s.get('p99'))} | {fmt_ms(s.get('max'))} |")
        comp = comparisons(report)
        lines += ["", "raftsso / etcd: " + ", ".join(f"{k.replace('_', ' ')} **{v:.2f}**"
                                                     for k, v in comp.items()), ""]
    elif e:
        lines += ["### etcd", "", e.get("note", "skipped"), ""]
    lines += _peer_tables(report)
    ld = get(report, "load")
    if ld:
        c = ld["clients"]
        lines += ["### Client load (keyring fetches from node1)", "",
                  f"Clients: {c['connected']:,} simulated clients, each with its own mTLS "
                  f"connection (opened in {c['connect_s']:.1f} s, "
                  f"{c['handshakes_per_s']:.0f} handshakes/s), resync "
                  f"{ld['config']['client_interval_s']:g} s +/-10 %: "
                  f"{c['achieved_per_s']:.0f} fetches/s, p50 {fmt_ms(c['p50_s'])}, p99 "
                  f"{fmt_ms(c['p99_s'])}, {c['errors'] + c['connect_errors']} errors; node CPU "
                  f"{c['node_cpu']:.2f} core, RSS {c['node_rss_mib_before']:.0f} MiB idle -> "
                  f"{c['node_rss_mib_connected']:.0f} MiB with the connections open.", "",
                  f"Ramp (measured first, on the fresh node; {ld['config']['ramp_pool']}):",
                  "",
                  "| offered/s | done/s | p50 | p99 | node CPU | generator CPU | machine CPU "
                  "| generator lag p99 | sustained |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for s in ld["ramp"]:
            lines.append(f"| {s['offered_per_s']:,} | {s['achieved_per_s']:,.0f} | "
                         f"{fmt_ms(s['p50_s'])} | {fmt_ms(s['p99_s'])} | {s['node_cpu']:.2f} | "
                         f"{s['generator_cpu_proc']:.2f} | {s.get('machine_cpu', 0):.2f} | "
                         f"{fmt_ms(s['generator_lag_p99_s'])} | "
                         f"{'yes' if s['sustained'] else 'no'} |")
        sat = ld.get("saturation") or {}
        if sat:
            lines += ["", f"Closed loop ({sat['connections']} connections back to back): "
                      f"**{sat['achieved_per_s']:,.0f}/s**, p50 {fmt_ms(sat['p50_s'])}, p99 "
                      f"{fmt_ms(sat['p99_s'])}; node CPU {sat['node_cpu']:.2f}, generator "
                      f"{sat['generator_cpu_proc']:.2f}, machine {sat['machine_cpu']:.2f} "
                      "cores."]
        at = ld.get("at_target_rate")
        if at:
            lines += ["", f"At exactly {at['offered_per_s']:,}/s offered ("
                      + ("the ramp's step" if at.get("ramp_step") else "one step after the "
                         "ramp, which stopped below it")
                      + f"): done {at['achieved_per_s']:,.0f}/s, p50 {fmt_ms(at['p50_s'])}, "
                      f"**p99 {fmt_ms(at['p99_s'])}**, {at['errors']} errors, node CPU "
                      f"{at['node_cpu']:.2f}."]
        for kind, x in (ld.get("churn") or {}).items():
            how = "resuming the TLS session" if kind == "resumed" else "full handshakes"
            lines += ["", f"New connections, {how} "
                      f"({x['threads']} threads: connect, one fetch, close): "
                      f"**{x['achieved_per_s']:,.0f}/s**, {x['resumed']:,} of {x['completed']:,} "
                      f"resumed, p50 {fmt_ms(x['p50_s'])}, {x['errors']} errors; node CPU "
                      f"{x['node_cpu']:.2f}, generator {x['generator_cpu_proc']:.2f}."]
        lines += ["", f"Highest sustained: **{ld['max_sustained_per_s']:,.0f}/s**. "
                  f"Limit: {ld['limit']}.", ""]
    r = get(report, "rotation")
    if r:
        s, c, g = r["sequential"], r["concurrent"], r["keyring_growth"]
        w = r["rotate_now_with_clients"]
        lines += ["### Rotation", "",
                  f"Sequential (n={s['n']}): p50 {fmt_ms(s['p50_s'])}, p90 {fmt_ms(s['p90_s'])}, "
                  f"p99 {fmt_ms(s['p99_s'])}, max {fmt_ms(s['max_s'])} (first tenth p50 "
                  f"{fmt_ms(s['first_tenth_p50_s'])}, last tenth {fmt_ms(s['last_tenth_p50_s'])}). "
                  f"Concurrent ({c['threads']} threads): {c['commits_per_s']:.0f} commits/s, "
                  f"{c['errors']} errors.", "",
                  f"Keyring growth: {g['versions_before']} -> {g['versions_after_sequential']} "
                  f"versions, answer {g['answer_bytes_before']:,} -> "
                  f"{g['answer_bytes_after_sequential']:,} bytes "
                  f"({g['bytes_per_version']:.0f} B per version), fetch p50 "
                  f"{fmt_ms(g['fetch_p50_s_before'])} -> {fmt_ms(g['fetch_p50_s_after'])}"
                  + (f"; the answer to a client that holds the keyring: "
                     f"{g['held_answer_bytes_before']} -> "
                     f"{g['held_answer_bytes_after_sequential']} bytes"
                     if "held_answer_bytes_before" in g else "") + ".", "",
                  f"`rotate --now` x{w['rotations']} with 4 SSO clients running: "
                  f"**{w['failed_ops']}** failed client operations of "
                  f"{w['ok_ops'] + w['failed_ops']:,}"
                  + (f" (e.g. `{w['failures'][0]}`)" if w["failures"] else "") + ".", ""]
    cm = get(report, "commits")
    if cm:
        s, c = cm["sequential"], cm["concurrent"]
        lines += ["### Raft commits (the write path alone)", "",
                  f"Sequential (n={s['n']}): p50 {fmt_ms(s['p50_s'])}, p90 {fmt_ms(s['p90_s'])}, "
                  f"p99 {fmt_ms(s['p99_s'])}; leader CPU {s['leader_cpu_ms_per_commit']:.2f} ms "
                  f"per commit. {c['threads']} writers: **{c['commits_per_s']:,.0f} "
                  f"commits/s**, {c['leader_entries_per_fsync']:.1f} entries per leader "
                  f"fsync, {c['errors']} errors.", ""]
    idle = get(report, "idle")
    if idle:
        lines += [f"Idle cluster, {idle['seconds']:.0f} s: {idle['elections']} elections, "
                  f"{idle['leader_changes']} leader changes.", ""]
    lines += _cli_and_agent(report)
    enc = get(report, "encryption")
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
                             f"{x['raw_nonce_encrypt']:,.0f} | {fmt_ops(x.get('floor_encrypt'))} | "
                             f"{x['client_encrypt']:,.0f} | {x['encrypt_ratio']:.0%} | "
                             f"{x['raw_decrypt']:,.0f} | {fmt_ops(x.get('floor_decrypt'))} | "
                             f"{x['client_decrypt']:,.0f} | {x['decrypt_ratio']:.0%} |")
        lines.append("")
    rw = get(report, "rewrap")
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


def _cli_and_agent(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    cli = get(report, "cli")
    if cli:
        lines += ["### CLI start (wall time of a fresh process)", "",
                  "| command | min | p50 | p90 | max | exit codes |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for key, label in (("python_start", "`python -c pass`"),
                           ("version", "`raftsso --version`"),
                           ("status", "`raftsso status` (healthy local cluster)")):
            x = cli.get(key)
            if x:
                lines.append(f"| {label} | {fmt_ms(x['min_s'])} | {fmt_ms(x['p50_s'])} | "
                             f"{fmt_ms(x['p90_s'])} | {fmt_ms(x['max_s'])} | "
                             f"{', '.join(map(str, x['exit_codes']))} |")
        imports = cli.get("status_imports_s") or []
        lines += ["", f"{cli['config']['runs']} runs each. Slowest top-level imports of "
                  "`status`: " + (", ".join(f"`{name.strip()}` {fmt_ms(sec)}"
                                            for name, sec in imports) or "-") + ".", ""]
    agent = get(report, "agent")
    if agent:
        lines += ["### Agent (HTTP over its Unix socket, 1 KiB)", "",
                  "| op | clients | ops/s | p50 | p99 | errors | agent CPU |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, x in agent.items():
            if " x" in key and isinstance(x, dict):  # "encrypt x8"; not "target", "config"
                lines.append(f"| {key.rsplit(' x', 1)[0]} | {x['clients']} | "
                             f"{fmt_ops(x['ops_per_s'])} | {x['p50_ms']:.3f} ms | "
                             f"{x['p99_ms']:.3f} ms | {x['errors']} | "
                             f"{x.get('agent_cpu') or 0:.2f} |")
        lines.append("")
    return lines


def _peer_tables(report: dict[str, Any]) -> list[str]:
    """raftsso beside etcd and OpenBao, from one run; '-' where a side was not measured."""
    bao = get(report, "openbao")
    if not bao:
        return []
    if bao.get("skipped"):
        return ["### OpenBao", "", bao.get("note", "skipped"), ""]
    lines: list[str] = []
    fo = bao["failover"]
    d, m1 = fo["default"], fo["multiplier_1"]
    r_ack = get(report, "failover", "sigkill", "ack_rotate_s") or {}
    e_ack = get(report, "etcd", "ack_write_s") or {}
    r_rot = get(report, "rotation", "sequential", "p50_s")
    e_put = get(report, "etcd", "sequential_put_s", "median")
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
        lines.append(f"| {label} | {fmt_ms(r)} | {fmt_ms(e)} | {fmt_ms(bd)} | {fmt_ms(bm)} | "
                     f"{fmt_ratio(r, e)} | {fmt_ratio(r, bd)} | {fmt_ratio(r, bm)} |")
    lines.append(f"| acknowledged write, sequential p50 | {fmt_ms(r_rot)} | {fmt_ms(e_put)} | "
                 f"{fmt_ms(b_rot)} | | {fmt_ratio(r_rot, e_put)} | {fmt_ratio(r_rot, b_rot)} | |")
    def failed(f: dict[str, Any]) -> str:
        by = ", ".join(f"{k} {v:,}" for k, v in (f.get("failed_by_status") or {}).items())
        return f"{f['failed_writes']:,}" + (f" ({by})" if by else "")

    lines += ["", f"OpenBao failover trials: {d['trials']} per timing, default / multiplier 1 "
              f"(heartbeat timeout {d['heartbeat_s']:g} s / {m1['heartbeat_s']:g} s); "
              "failed writes while electing (any answer but 2xx, by status, 307 to the dead "
              f"node included and not followed; 'error': no answer): {failed(d)} / "
              f"{failed(m1)}; new active node median {fmt_ms(d['new_active_s'].get('median'))} / "
              f"{fmt_ms(m1['new_active_s'].get('median'))}.", ""]
    t = bao["transit"]
    n = t["clients"]
    lines += ["Encryption of 1 KiB: raftsso's in-process client (one thread, from "
              "`encryption`), the raftsso agent over its Unix socket (from `agent`: 1 and "
              f"{n} clients) and OpenBao transit over HTTP keep-alive (1 and {n} clients). "
              "Ratios are raftsso / OpenBao: above 1, raftsso is faster.", "",
              f"| op | raftsso client | agent | agent x{n} | transit | transit x{n} | "
              f"client / transit | agent / transit | agent x{n} / transit x{n} |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for op in ("encrypt", "decrypt"):
        client = get(report, "encryption", "1 KiB", f"client_{op}")
        a_seq, a_con = agent_rate(report, op, "sequential"), agent_rate(report, op, "concurrent")
        b_seq, b_con = t[f"{op}_sequential"]["per_s"], t[f"{op}_concurrent"]["per_s"]
        lines.append(f"| {op} | {fmt_rate(client)} | {fmt_rate(a_seq)} | {fmt_rate(a_con)} | "
                     f"{fmt_rate(b_seq)} | {fmt_rate(b_con)} | {fmt_ratio(client, b_seq)} | "
                     f"{fmt_ratio(a_seq, b_seq)} | {fmt_ratio(a_con, b_con)} |")
    lines += ["", f"OpenBao transit, sequential p50: encrypt "
              f"{fmt_ms(t['encrypt_sequential']['p50_s'])}, decrypt "
              f"{fmt_ms(t['decrypt_sequential']['p50_s'])}; key rotate p50 {fmt_ms(b_rot)}, p99 "
              f"{fmt_ms(t['rotate_sequential']['p99_s'])}; the {t['clients']}-client load "
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
             "Targets: issue 6, and issue 16 by item (16.N); met is yes, NO, or n/a (not "
             "measured, or at a size that cannot settle it).", "",
             "| issue | target | measured | met | scenario |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {a} | {b} | {c} | {d} |" for i, a, b, c, d in targets(report)]
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
