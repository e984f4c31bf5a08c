// Runs javascript/refdrop.js in node against a stand-in page and a simulated clock; prints what it clicked as
// JSON. Driven by tests/test_save_status_poll.py: node tests/refdrop_poll_harness.js <javascript/refdrop.js>
// <scenario>. The stand-in server answers a poll after ANSWER_MS: it bumps the button's label (the answer count)
// and sets the status line to the next of STATUSES (the last one stays).
"use strict";
const fs = require("fs");
const vm = require("vm");

const [file, scenario] = process.argv.slice(2);
const SAVING_LOG = "RefDrop: saving reference 'hero' in the background\nTime taken: 1.2 sec.";
const STATUSES = {
    quick: ["RefDrop: saved reference 'hero' (1.0 MB)"],
    slow_write: ["RefDrop: saving reference 'hero'… (0 MB so far)", "RefDrop: saving reference 'hero'… (3 MB so far)",
                 "RefDrop: saving reference 'hero'… (3 MB so far)", "RefDrop: saved reference 'hero' (4.0 MB)"],
    slow_answer: ["RefDrop: saving reference 'hero'… (0 MB so far)", "RefDrop: saved reference 'hero' (4.0 MB)"],
    stuck: ["RefDrop: saving reference 'hero'… (0 MB so far)"],
    lost_answer: [],
};
const ANSWER_MS = scenario === "slow_answer" ? 3500 : 300;

let now = 0;
const timers = [];
function setTimeoutFake(fn, ms) {
    timers.push({at: now + ms, fn});
}
function advance(ms) {
    const end = now + ms;
    for (;;) {
        timers.sort((a, b) => a.at - b.at);
        if (!timers.length || timers[0].at > end) {
            break;
        }
        const timer = timers.shift();
        now = timer.at;
        timer.fn();
    }
    now = end;
}

const elements = {};
const clicks = [];
function element(id, text = "") {
    elements[id] = {id, textContent: text, title: ""};
    return elements[id];
}
for (const tab of ["txt2img", "img2img"]) {
    element(`html_log_${tab}`);
    element(`script_${tab}_refdrop_status`);
    const button = element(`script_${tab}_refdrop_poll`, "0");
    let answers = 0;
    button.click = () => {
        clicks.push({tab, at: now});
        if (scenario === "lost_answer") {
            return;
        }
        setTimeoutFake(() => {
            const statuses = STATUSES[scenario];
            elements[`script_${tab}_refdrop_status`].textContent = statuses[Math.min(answers, statuses.length - 1)];
            answers += 1;
            button.textContent = String(Number(button.textContent) + 1);
        }, ANSWER_MS);
    };
}

const updateCallbacks = [];
const loadedCallbacks = [];
const styles = [];
const context = {
    gradioApp: () => ({getElementById: (id) => elements[id] || null, addEventListener: () => {}}),
    document: {createElement: () => ({textContent: ""}), head: {appendChild: (e) => styles.push(e.textContent)}},
    onUiLoaded: (fn) => loadedCallbacks.push(fn),
    onUiUpdate: (fn) => updateCallbacks.push(fn),
    onAfterUiUpdate: () => {},
    setTimeout: setTimeoutFake,
    Date: {now: () => now},
    console,
};
vm.runInNewContext(fs.readFileSync(file, "utf8"), context);
function domChanged() {  // what the host's MutationObserver does on every change of the page
    for (const fn of updateCallbacks) {
        fn([]);
    }
}

for (const fn of loadedCallbacks) {  // the page has loaded (the tooltips find no titles to set here)
    fn();
}
const result = {callbacks: updateCallbacks.length, styles};
for (let i = 0; i < 20; i++) {  // an idle page: the page changes, no Save
    domChanged();
    advance(1000);
}
elements.html_log_txt2img.textContent = "Time taken: 0.8 sec.";  // a generation without a Save
domChanged();
advance(10000);
result.idle_clicks = clicks.length;

elements.html_log_txt2img.textContent = SAVING_LOG;  // the Save's generation returns
domChanged();
result.first_click_at = clicks.length ? clicks[0].at - now : null;
const start = now;
for (const seconds of [1, 2, 5, 10, 30, 120, 1900, 3600]) {
    advance(start + seconds * 1000 - now);
    domChanged();  // the answers change the page
    result[`clicks_${seconds}s`] = clicks.filter((c) => c.tab === "txt2img").length - result.idle_clicks;
}
result.img2img_clicks = clicks.filter((c) => c.tab === "img2img").length;
result.txt2img_status = elements.script_txt2img_refdrop_status.textContent;
result.max_in_flight = (() => {  // clicks sent while an earlier one had no answer yet
    const own = clicks.filter((c) => c.tab === "txt2img").map((c) => c.at);
    let worst = 1;
    for (let i = 1; i < own.length; i++) {
        if (own[i] - own[i - 1] < ANSWER_MS) {
            worst = 2;
        }
    }
    return worst;
})();
const before = clicks.length;
domChanged();  // the same log again: no new round
advance(10000);
result.clicks_after_same_log = clicks.length - before;
process.stdout.write(JSON.stringify(result));
