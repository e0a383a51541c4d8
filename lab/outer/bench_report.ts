/**
 * Reports of a `bench --vm` result: a Markdown table (median, min–max per cell over every round's windows;
 * pvdrv/testpmd as the median of paired rounds' ratios with their spread, pvdrv/kernel from the medians) and an SVG
 * plot of frames/s against batch size, one panel per test and frame size.
 * @module
 */
import { summarize } from "./wire_traffic.ts";
import type { BenchRow, CpuRow } from "../bench_plan.ts";
import type { VmBenchResult } from "./vm_bench.ts";

const DRIVERS = ["pvdrv", "pvdrv-packed", "testpmd", "kernel", "pktgen"] as const;
const COLORS: Record<string, string> = {
  pvdrv: "#d62728",
  "pvdrv-packed": "#ff7f0e",
  testpmd: "#1f77b4",
  kernel: "#2ca02c",
  pktgen: "#9467bd",
};
const TITLES: Record<string, string> = {
  tx: "TX (host-counted)",
  rx: "RX (receiver-counted, host offers)",
  fwd: "forwarding 06→09 (host-counted)",
};

const k = (x: number) => x >= 10_000 ? `${(x / 1000).toFixed(0)}k` : `${(x / 1000).toFixed(1)}k`;
const ratio = (a?: number, b?: number) => (a && b ? `${(a / b).toFixed(2)}x` : "–");

/** A cell's rows (every round) of one driver, merged: the windows of all its rounds. */
function cell(
  rows: BenchRow[],
  test: string,
  driver: string,
  size: number,
  batch: number,
): BenchRow | undefined {
  const mine = rows.filter((r) =>
    r.test === test && r.driver === driver && r.size === size && r.batch === batch && r.windows.length
  );
  if (!mine.length) return undefined;
  return { ...mine[0], windows: mine.flatMap((r) => r.windows), round: 0 };
}

/** The median of a row's windows (0 without windows). */
export function median(r?: BenchRow): number {
  return r ? summarize(r.windows).median : 0;
}

/**
 * The ratios of driver `a` over driver `b` in one cell, one per round both measured (each the ratio of the two
 * rounds' medians): neighbours in time, so drift of the machine between rounds cancels out.
 */
export function pairedRatios(
  rows: BenchRow[],
  test: string,
  size: number,
  batch: number,
  a: string,
  b: string,
): number[] {
  const at = (d: string, round: number) =>
    rows.find((r) =>
      r.test === test && r.driver === d && r.size === size && r.batch === batch && r.round === round &&
      r.windows.length
    );
  const rounds = [...new Set(rows.map((r) => r.round))].sort((x, y) => x - y);
  const out: number[] = [];
  for (const round of rounds) {
    const x = median(at(a, round)), y = median(at(b, round));
    if (x && y) out.push(x / y);
  }
  return out;
}

/** Paired ratios as "median (min–max)", or the one ratio, or "–". */
function pairedText(ratios: number[]): string {
  if (!ratios.length) return "–";
  const s = summarize(ratios);
  return ratios.length === 1
    ? `${s.median.toFixed(2)}x`
    : `${s.median.toFixed(2)}x (${s.min.toFixed(2)}–${s.max.toFixed(2)})`;
}

/** The result as Markdown tables. */
export function markdownTables(res: VmBenchResult): string {
  const out: string[] = [];
  for (const test of ["tx", "rx", "fwd"] as const) {
    const sizes = [...new Set(res.rows.filter((r) => r.test === test).map((r) => r.size))];
    for (const size of sizes) {
      const drivers = DRIVERS.filter((d) => res.rows.some((r) => r.test === test && r.driver === d));
      const hasKernel = drivers.includes("kernel"), hasPacked = drivers.includes("pvdrv-packed");
      const packedCols = hasPacked ? " | packed/testpmd | packed/split" : "";
      const rounds = res.plan.rounds ?? 1;
      out.push(
        `**${TITLES[test]}, ${size}-byte frames** (frames/s: median of ${
          res.plan.windows * rounds
        } windows, min–max; pvdrv/testpmd: median of ${rounds} paired rounds' ratios, min–max)`,
      );
      out.push("");
      out.push(
        `| batch | ${drivers.join(" | ")} | pvdrv/testpmd${packedCols}${hasKernel ? " | pvdrv/kernel" : ""}${
          test !== "tx" ? " | offered" : ""
        } |`,
      );
      out.push(
        `|---:|${drivers.map(() => "---:").join("|")}|---:|${hasPacked ? "---:|---:|" : ""}${
          hasKernel ? "---:|" : ""
        }${test !== "tx" ? "---:|" : ""}`,
      );
      const batches = [
        ...new Set(res.rows.filter((r) => r.test === test && r.size === size).map((r) => r.batch)),
      ]
        .sort((a, b) => a - b);
      for (const b of batches) {
        const cells = drivers.map((d) => {
          const r = cell(res.rows, test, d, size, b);
          if (!r || !r.windows.length) return "–";
          const s = summarize(r.windows);
          return `${k(s.median)} (${k(s.min)}–${k(s.max)})`;
        });
        const p = median(cell(res.rows, test, "pvdrv", size, b));
        const offered = test !== "tx"
          ? ` ${k(Math.max(...drivers.map((d) => cell(res.rows, test, d, size, b)?.offered ?? 0)))} |`
          : "";
        const paired = (a: string, z: string) => pairedText(pairedRatios(res.rows, test, size, b, a, z));
        const packed = hasPacked
          ? ` ${paired("pvdrv-packed", "testpmd")} | ${paired("pvdrv-packed", "pvdrv")} |`
          : "";
        out.push(
          `| ${b} | ${cells.join(" | ")} | ${paired("pvdrv", "testpmd")} |${packed}${
            hasKernel ? ` ${ratio(p, median(cell(res.rows, test, "kernel", size, b)))} |` : ""
          }${offered}`,
        );
      }
      out.push("");
    }
  }
  if (res.cpu.length) {
    const idle = res.cpu.find((c) => c.mode === "idle");
    const idlePerSec = idle ? idle.busySeconds / idle.seconds : 0;
    out.push(
      "**Guest CPU per received packet at a fixed offered rate** (64-byte frames; /proc/stat over all vCPUs, " +
        `less the idle guest's ${(idlePerSec * 100).toFixed(1)}% measured in the same boot)`,
    );
    out.push("");
    out.push("| offered | mode | received/s | CPU µs per packet | vs kernel |");
    out.push("|---:|---|---:|---:|---:|");
    const us = (c: CpuRow) => c.received ? ((c.busySeconds - idlePerSec * c.seconds) * 1e6) / c.received : 0;
    for (const c of res.cpu.filter((c) => c.mode !== "idle")) {
      const kern = res.cpu.find((x) => x.mode === "kernel" && x.rate === c.rate);
      out.push(
        `| ${k(c.rate)} | ${c.mode} | ${k(c.received / c.seconds)} | ${us(c).toFixed(1)} | ${
          kern ? ratio(us(c), us(kern)) : "–"
        } |`,
      );
    }
    out.push("");
  }
  return out.join("\n");
}

/** The result as an SVG: one panel per (test, size), frames/s (median, min–max bars) against batch (log2). */
export function svgPlot(res: VmBenchResult): string {
  const panels: { test: string; size: number }[] = [];
  for (const test of ["tx", "rx", "fwd"]) {
    for (const size of [...new Set(res.rows.filter((r) => r.test === test).map((r) => r.size))]) {
      panels.push({ test, size });
    }
  }
  const W = 360, H = 240, M = { l: 56, r: 12, t: 28, b: 40 }, cols = 2;
  const rowsN = Math.ceil(panels.length / cols);
  const parts: string[] = [];
  panels.forEach((p, i) => {
    const ox = (i % cols) * W, oy = Math.floor(i / cols) * H;
    const rows = DRIVERS.flatMap((d) =>
      [...new Set(res.rows.map((r) => r.batch))].map((b) => cell(res.rows, p.test, d, p.size, b))
    ).filter((r): r is BenchRow => r !== undefined);
    const batches = [...new Set(rows.map((r) => r.batch))].sort((a, b) => a - b);
    const maxY = Math.max(1, ...rows.map((r) => summarize(r.windows).max)) * 1.1;
    const lb = batches.map((b) => Math.log2(b)), lo = Math.min(...lb), hi = Math.max(...lb, lo + 1);
    const x = (b: number) => ox + M.l + ((Math.log2(b) - lo) / (hi - lo)) * (W - M.l - M.r);
    const y = (v: number) => oy + H - M.b - (v / maxY) * (H - M.t - M.b);
    parts.push(
      `<text x="${ox + W / 2}" y="${oy + 18}" text-anchor="middle" font-size="13">${
        TITLES[p.test]
      }, ${p.size} B</text>`,
      `<line x1="${ox + M.l}" y1="${y(0)}" x2="${ox + W - M.r}" y2="${y(0)}" stroke="#000"/>`,
      `<line x1="${ox + M.l}" y1="${y(0)}" x2="${ox + M.l}" y2="${oy + M.t}" stroke="#000"/>`,
    );
    for (const b of batches) {
      parts.push(`<text x="${x(b)}" y="${y(0) + 14}" text-anchor="middle" font-size="10">${b}</text>`);
    }
    parts.push(`<text x="${ox + W / 2}" y="${oy + H - 8}" text-anchor="middle" font-size="10">batch</text>`);
    for (let t = 0; t <= 4; t++) {
      const v = (maxY / 1.1) * t / 4;
      parts.push(`<text x="${ox + M.l - 4}" y="${y(v) + 3}" text-anchor="end" font-size="10">${k(v)}</text>`);
    }
    for (const d of DRIVERS) {
      const pts = rows.filter((r) => r.driver === d).sort((a, b) => a.batch - b.batch);
      if (!pts.length) continue;
      const path = pts.map((r, j) => `${j ? "L" : "M"}${x(r.batch).toFixed(1)},${y(median(r)).toFixed(1)}`)
        .join(" ");
      parts.push(`<path d="${path}" fill="none" stroke="${COLORS[d]}" stroke-width="2"/>`);
      for (const r of pts) {
        const s = summarize(r.windows);
        parts.push(
          `<line x1="${x(r.batch)}" y1="${y(s.min)}" x2="${x(r.batch)}" y2="${y(s.max)}" stroke="${
            COLORS[d]
          }"/>`,
          `<circle cx="${x(r.batch)}" cy="${y(s.median)}" r="2.5" fill="${COLORS[d]}"/>`,
        );
      }
    }
  });
  const legendY = rowsN * H + 16;
  DRIVERS.forEach((d, i) => {
    parts.push(
      `<rect x="${20 + i * 110}" y="${legendY - 9}" width="12" height="4" fill="${COLORS[d]}"/>`,
      `<text x="${36 + i * 110}" y="${legendY - 4}" font-size="12">${d}</text>`,
    );
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${cols * W}" height="${legendY + 10}" ` +
    `font-family="sans-serif">\n<rect width="100%" height="100%" fill="#fff"/>\n${
      parts.join("\n")
    }\n</svg>\n`;
}
