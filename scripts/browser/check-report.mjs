// Opens a report in headless Chromium and prints what rendered, as JSON:
//   node check-report.mjs FILE.html [SCREENSHOT.png]
// With a second argument, the whole page is also saved as a PNG (the test suite keeps it as an
// artefact: what a person sees). Each chart's drawn rectangles are reported with their box on
// the page and their fill, so the test can check bars the way a reader sees them.
// Console errors, page errors and any request that is not the file itself are collected, so
// the test can require a page that needs no network and logs nothing.
import { chromium } from "playwright-core";

const file = process.argv[2];
const screenshot = process.argv[3];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root in a container Chromium needs --no-sandbox; the rest keeps it off the network.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { console: [], pageErrors: [], requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("console", (m) => result.console.push({ type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  page.on("request", (r) => result.requests.push(r.url()));
  await page.goto("file://" + file, { waitUntil: "load", timeout: 30000 });
  Object.assign(result, await page.evaluate(() => {
    const section = (id) => document.getElementById(id);
    const box = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
    const svgs = (id) => [...(section(id)?.querySelectorAll("svg") ?? [])].map((s) => ({
      size: box(s),
      shapes: s.querySelectorAll("rect, path, polyline, circle, line").length,
      texts: [...s.querySelectorAll("text")].map((t) => t.textContent),
      bars: [...s.querySelectorAll("rect")]
        .filter((r) => (r.getAttribute("fill") || "").toLowerCase() !== "#ffffff")
        .map((r) => { const b = r.getBoundingClientRect();
                      return { x: b.x, y: b.y, width: b.width, height: b.height,
                               fill: (r.getAttribute("fill") || "").toLowerCase() }; }),
    }));
    const rows = (id) => [...(document.getElementById(id)?.querySelectorAll("tbody tr") ?? [])]
      .map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent));
    return {
      title: document.title,
      sections: [...document.querySelectorAll("section")].map((s) => s.id),
      charts: {
        perHour: svgs("per-hour"), topSeries: svgs("top-series"),
        scores: svgs("scores"), timelines: svgs("timelines"),
      },
      tables: {
        summary: rows("summary-table"), topSeries: rows("top-series-table"),
        drift: rows("drift-table"), failures: rows("failures-table"),
      },
      external: [...document.querySelectorAll("[src], link[href], script")].length,
    };
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
