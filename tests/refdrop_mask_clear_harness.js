// Runs javascript/refdrop.js in node against a stand-in page with gradio 3 sketch toolbars, clicks each toolbar's
// "Clear" as a user would (the toolbar's handler stops the click from bubbling), and prints which "Remove Image"
// buttons were clicked as a result, as JSON. Driven by tests/test_ui.py: node tests/refdrop_mask_clear_harness.js
// <javascript/refdrop.js>.
"use strict";
const fs = require("fs");
const vm = require("vm");

const [file] = process.argv.slice(2);
const removed = [];

function element(id, parent) {
    return {
        id, parent, children: [], ariaLabel: null,
        closest(selector) {  // the two selector shapes the script uses
            for (let e = this; e; e = e.parent) {
                if (matches(e, selector)) {
                    return e;
                }
            }
            return null;
        },
        querySelector(selector) {
            for (const child of this.children) {
                const found = matches(child, selector) ? child : child.querySelector(selector);
                if (found) {
                    return found;
                }
            }
            return null;
        },
        getAttribute(name) {
            return name === "aria-label" ? this.ariaLabel : null;
        },
    };
}

function matches(e, selector) {
    const label = selector.match(/^button\[aria-label="(.+)"\]$/);
    if (label) {
        return e.tag === "button" && e.ariaLabel === label[1];
    }
    if (selector === '[id^="script_"][id*="_refdrop_mask"]') {
        return typeof e.id === "string" && e.id.startsWith("script_") && e.id.includes("_refdrop_mask");
    }
    throw new Error(`selector the stand-in page does not know: ${selector}`);
}

function add(parent, id, tag, ariaLabel) {
    const child = element(id, parent);
    child.tag = tag;
    child.ariaLabel = ariaLabel || null;
    parent.children.push(child);
    return child;
}

// Each image: a toolbar with Undo, Clear, Remove Image. A RefDrop mask inside its accordion, another slot's mask,
// and the host's own inpaint sketch (not RefDrop's: its Clear must keep the picture).
const root = element("root", null);
const icons = {};  // image id -> the icon inside its Clear button
for (const id of ["script_txt2img_refdrop_mask", "script_img2img_refdrop_mask_2", "img2maskimg"]) {
    const box = add(root, `${id}_box`, "div");
    const image = add(box, id, "div");
    const toolbar = add(image, null, "div");
    const clear = add(toolbar, null, "button", "Clear");
    icons[id] = add(clear, null, "svg");  // a click lands on the icon, not the button
    add(toolbar, null, "button", "Undo");
    add(toolbar, null, "button", "Remove Image").click = () => removed.push(id);
}

const listeners = [];
const timers = [];
const loadedCallbacks = [];
const context = {
    gradioApp: () => ({
        getElementById: () => null,
        addEventListener: (type, fn, capture) => listeners.push({type, fn, capture}),
    }),
    document: {createElement: () => ({textContent: ""}), head: {appendChild: () => {}}},
    onUiLoaded: (fn) => loadedCallbacks.push(fn),
    onUiUpdate: () => {},
    onAfterUiUpdate: () => {},
    setTimeout: (fn) => timers.push(fn),
    Date,
    console,
};
vm.runInNewContext(fs.readFileSync(file, "utf8"), context);
for (const fn of loadedCallbacks) {
    fn();
}
// The toolbar's own handler calls stopPropagation: only listeners of the capture phase see the click.
const result = {};
for (const [id, icon] of Object.entries(icons)) {
    removed.length = 0;
    for (const {type, fn, capture} of listeners) {
        if (type === "click" && capture) {
            fn({target: icon});
        }
    }
    while (timers.length) {
        timers.shift()();
    }
    result[id] = [...removed];
}
process.stdout.write(JSON.stringify(result));
