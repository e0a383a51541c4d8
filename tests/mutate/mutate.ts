/**
 * `deno task mutate [--count N] [--seed S] [--jobs J] [--only PATH] [--json FILE] [--retry FILE]`: a small
 * mutation tester for the whole library (`net/`, `apps/`, `hal/`, `drivers/`, `system/`, `ffi/`). It makes single small
 * changes (a comparison flipped or loosened, a boolean operator swapped, a constant moved by one, a negation
 * dropped, a guard's `throw` or an early `return` removed, a boolean result inverted), runs the unit tests that
 * import the mutated file (found with `deno info`) on a copy of the tree for each, and reports which mutants the
 * tests killed. Survivors are printed
 * with their diff, to be killed with a test or judged equivalent; `--retry` runs an earlier run's survivors (from
 * its `--json`) against the tree as it is now. Not part of CI (it takes minutes).
 * @module
 */
import { parseArgs } from "parse-args";
import { Rng } from "../fuzz/fuzz.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
/** The library's folders: what is mutated. */
export const LIBRARY = ["net", "apps", "hal", "drivers", "system", "ffi"];

/** One mutant: a single-line replacement. */
export interface Mutant {
  /** Path from the project root. */
  file: string;
  /** 1-based line number. */
  line: number;
  /** The line as it is. */
  before: string;
  /** The line mutated. */
  after: string;
  /** Which change (e.g. "< to <="). */
  operator: string;
}

const OPERATORS: [string, RegExp, string | ((...m: string[]) => string)][] = [
  ["< to <=", / < /, " <= "],
  ["<= to <", / <= /, " < "],
  ["> to >=", / > /, " >= "],
  [">= to >", / >= /, " > "],
  ["=== to !==", / === /, " !== "],
  ["!== to ===", / !== /, " === "],
  ["&& to ||", / && /, " || "],
  ["|| to &&", / \|\| /, " && "],
  ["+ 1 to + 0", / \+ 1\b/, " + 0"],
  ["- 1 to - 0", / - 1\b/, " - 0"],
  ["+ 2 to + 1", / \+ 2\b/, " + 1"],
  ["drop !", /([(\s])!(?!=)([\w.#(])/, "$1$2"],
  ["throw removed", /^(\s*)(if \(.*\)) throw /, "$1$2 void "],
  ["0xfc to 0xff", /0xfc\b/, "0xff"],
  ["+ N to + N+1", / \+ ([3-9]|[1-9]\d+)\b(?!\.)/, (_m, n) => ` + ${Number(n) + 1}`],
  ["- N to - N+1", / - ([2-9]|[1-9]\d+)\b(?!\.)/, (_m, n) => ` - ${Number(n) + 1}`],
  ["< N to < N+1", / (<|>|<=|>=) ([2-9]|[1-9]\d+)\b(?![.\]])/, (_m, op, n) => ` ${op} ${Number(n) + 1}`],
  ["return true to false", /\breturn true;/, "return false;"],
  ["return false to true", /\breturn false;/, "return true;"],
  ["early return removed", /^(\s*)(if \(.*\)) return( void [^;]+)?;$/, "$1$2 {}"],
];

/** Every mutant of one source text. */
export function mutantsOf(file: string, text: string): Mutant[] {
  const out: Mutant[] = [];
  const lines = text.split("\n");
  let inComment = false;
  lines.forEach((line, i) => {
    const t = line.trim();
    if (t.startsWith("/*")) inComment = true;
    if (inComment) {
      if (t.includes("*/")) inComment = false;
      return;
    }
    if (!t || t.startsWith("//") || t.startsWith("import ") || t.startsWith("export {") || /`/.test(t)) {
      return;
    }
    const code = line.replace(/\/\/.*$/, "");
    for (const [operator, re, rep] of OPERATORS) {
      if (!re.test(code)) continue;
      const after = typeof rep === "string" ? code.replace(re, rep) : code.replace(re, rep as never);
      if (after !== code) out.push({ file, line: i + 1, before: line, after, operator });
    }
  });
  return out;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...walk(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

function copyTree(to: string): void {
  for (const d of [...LIBRARY, "tests", "cli", "lab", "bench", "native"]) {
    new Deno.Command("cp", { args: ["-r", `${ROOT}${d}`, `${to}/`] }).outputSync();
  }
  for (const f of ["deno.json", "mod.ts"]) Deno.copyFileSync(`${ROOT}${f}`, `${to}/${f}`);
  Deno.mkdirSync(`${to}/build`, { recursive: true });
  for (const f of Deno.readDirSync(`${ROOT}build`)) {
    if (f.isFile) Deno.copyFileSync(`${ROOT}build/${f.name}`, `${to}/build/${f.name}`);
  }
}

/** For each library file, the unit test files that import it (directly or not), from `deno info --json`. */
async function testsByFile(): Promise<Map<string, string[]>> {
  const by = new Map<string, string[]>();
  const tests = [...Deno.readDirSync(`${ROOT}tests/unit`)].map((e) => e.name).filter((n) =>
    n.endsWith("_test.ts")
  );
  await Promise.all(tests.map(async (t) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", `tests/unit/${t}`],
      cwd: ROOT,
      stdout: "piped",
      stderr: "null",
    }).output();
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: { specifier: string }[] };
    for (const m of info.modules) {
      if (!m.specifier.startsWith(`file://${ROOT}`)) continue;
      const f = m.specifier.slice(`file://${ROOT}`.length);
      if (!by.has(f)) by.set(f, []);
      by.get(f)!.push(`tests/unit/${t}`);
    }
  }));
  return by;
}

async function runSuite(
  dir: string,
  tests: string[],
  timeoutMs: number,
): Promise<"killed" | "survived" | "timeout"> {
  if (tests.length === 0) return "survived"; // no test imports the file
  // In a session of its own (setsid): a mutant that hangs a test's own child process (the fuzz tests run one)
  // is killed with its whole process group, not left spinning after the suite is gone.
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "test", "-A", "--no-check", ...tests],
    cwd: dir,
    stdout: "null",
    stderr: "null",
    env: { NO_COLOR: "1", PVDRV_NO_BUILD: "1" },
  }).spawn();
  const killGroup = () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* the group is gone already */ }
  };
  const timer = setTimeout(killGroup, timeoutMs);
  const st = await child.status;
  clearTimeout(timer);
  killGroup(); // whatever the suite left behind
  if (st.signal === "SIGKILL") return "timeout";
  return st.success ? "survived" : "killed";
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string" },
      seed: { type: "string" },
      jobs: { type: "string" },
      only: { type: "string" },
      json: { type: "string" },
      retry: { type: "string" },
    },
  });
  const files = LIBRARY.flatMap((d) => walk(`${ROOT}${d}`)).filter((f) =>
    !values.only || f.includes(values.only)
  );
  const tests = await testsByFile();
  const all: Mutant[] = [];
  for (const f of files) all.push(...mutantsOf(f.slice(ROOT.length), Deno.readTextFileSync(f)));
  const rng = new Rng(Number(values.seed ?? 1));
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  let chosen = all.slice(0, Number(values.count ?? 60));
  if (values.retry) {
    // The survivors of an earlier run, found again by their line's text (the file may have moved since).
    const earlier = JSON.parse(Deno.readTextFileSync(values.retry)) as (Mutant & { result: string })[];
    chosen = [];
    for (const m of earlier.filter((r) => r.result === "survived")) {
      let lines: string[];
      try {
        lines = Deno.readTextFileSync(`${ROOT}${m.file}`).split("\n");
      } catch {
        console.log(`gone     ${m.file}:${m.line} (the file no longer exists)`);
        continue;
      }
      const at = lines.findIndex((l) => l === m.before);
      if (at < 0) {
        console.log(`gone     ${m.file}:${m.line} ${m.operator} (the line changed since)`);
        continue;
      }
      chosen.push({ ...m, line: at + 1 });
    }
  }
  const jobs = Number(values.jobs ?? 2);
  console.log(
    `mutate: ${all.length} mutants in ${files.length} files; running ${chosen.length} with ${jobs} jobs`,
  );
  const dirs = Array.from({ length: jobs }, () => {
    const d = Deno.makeTempDirSync({ prefix: "pvdrv-mutate-" });
    copyTree(d);
    return d;
  });
  const results: (Mutant & { result: string })[] = [];
  let next = 0;
  await Promise.all(dirs.map(async (dir) => {
    while (next < chosen.length) {
      const m = chosen[next++];
      const path = `${dir}/${m.file}`;
      const original = Deno.readTextFileSync(path);
      const lines = original.split("\n");
      lines[m.line - 1] = m.after;
      Deno.writeTextFileSync(path, lines.join("\n"));
      const result = await runSuite(dir, tests.get(m.file) ?? [], 120_000);
      Deno.writeTextFileSync(path, original);
      results.push({ ...m, result });
      console.log(`${result.padEnd(8)} ${m.file}:${m.line} ${m.operator}`);
    }
  }));
  for (const d of dirs) Deno.removeSync(d, { recursive: true });
  const survived = results.filter((r) => r.result === "survived");
  console.log(`\nsurvivors (${survived.length}):`);
  for (const s of survived) {
    console.log(`  ${s.file}:${s.line} ${s.operator}\n    - ${s.before.trim()}\n    + ${s.after.trim()}`);
  }
  const killed = results.length - survived.length;
  console.log(
    `mutate: ${killed} of ${results.length} killed (${(100 * killed / results.length).toFixed(0)}%)`,
  );
  if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(results, null, 2));
}
