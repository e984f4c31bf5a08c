// Runs javascript/refdrop.js in node against a stand-in page that carries the panel's tooltips, and prints the title
// each item got, per tab, as JSON. Driven by tests/test_ui.py:
// node tests/refdrop_tooltip_harness.js <javascript/refdrop.js> <page.json>, where page.json holds "attribute" (the
// data-refdrop-tooltips value as the browser reads it) and "items" (the item ids the page has elements for).
"use strict";
const fs = require("fs");
const vm = require("vm");

const [file, pageFile] = process.argv.slice(2);
const page = JSON.parse(fs.readFileSync(pageFile, "utf8"));
const TABS = ["txt2img", "img2img"];
const elements = {};
for (const tab of TABS) {
    const data = {getAttribute: (name) => (name === "data-refdrop-tooltips" ? page.attribute : null)};
    elements[`script_${tab}_refdrop_tooltips`] = {
        title: "",
        querySelector: (selector) => (selector === "[data-refdrop-tooltips]" ? data : null),
    };
    for (const item of page.items) {
        elements[`script_${tab}_refdrop_${item}`] = {id: item, title: "", textContent: ""};
    }
}
const loadedCallbacks = [];
const context = {
    gradioApp: () => ({getElementById: (id) => elements[id] || null, addEventListener: () => {}}),
    document: {createElement: () => ({textContent: ""}), head: {appendChild: () => {}}},
    onUiLoaded: (fn) => loadedCallbacks.push(fn),
    onUiUpdate: () => {},
    onAfterUiUpdate: () => {},
    setTimeout: () => {},
    Date,
    console,
};
vm.runInNewContext(fs.readFileSync(file, "utf8"), context);
for (const fn of loadedCallbacks) {
    fn();
}
const titles = {};
for (const tab of TABS) {
    titles[tab] = {};
    for (const item of page.items) {
        titles[tab][item] = elements[`script_${tab}_refdrop_${item}`].title;
    }
}
process.stdout.write(JSON.stringify(titles));
