// RefDrop panel tooltips. Their text is lib_refdrop/webui/panel.py's TOOLTIPS, keyed by its item ids (ITEM_IDS), which
// each panel carries as JSON in a hidden element (script_<tab>_refdrop_tooltips); elements are found by the elem_id
// the script gives them: script_txt2img_refdrop_<item> / script_img2img_refdrop_<item>.
(function () {
    function panelTooltips(tab) {
        const holder = gradioApp().getElementById(`script_${tab}_refdrop_tooltips`);
        const data = holder && holder.querySelector("[data-refdrop-tooltips]");
        if (!data) {
            return {};
        }
        try {
            return JSON.parse(data.getAttribute("data-refdrop-tooltips"));
        } catch (error) {
            console.error("RefDrop: the panel's tooltips are not readable JSON", error);
            return {};
        }
    }

    function applyRefDropTooltips() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [item, text] of Object.entries(panelTooltips(tab))) {
                const element = gradioApp().getElementById(`script_${tab}_refdrop_${item}`);
                if (element && !element.title) {
                    element.title = text;
                }
            }
        }
    }

    onUiLoaded(applyRefDropTooltips);

    // -- a cleared mask is no mask -----------------------------------------------------------------------------
    // gradio 3's sketch "Clear" removes the strokes and keeps the picture they were painted on; the panel would then
    // send that picture as an uploaded mask, which a Use refuses (it is not black and white). In a RefDrop mask,
    // Clear therefore removes the picture too. The toolbar stops the click from bubbling: it is seen while captured.
    const MASK = '[id^="script_"][id*="_refdrop_mask"]';

    function clearPictureWithStrokes(event) {
        const clear = event.target && event.target.closest && event.target.closest('button[aria-label="Clear"]');
        const mask = clear && clear.closest(MASK);
        const remove = mask && mask.querySelector('button[aria-label="Remove Image"]');
        if (remove) {
            setTimeout(() => remove.click(), 0);  // after gradio's own handler has cleared the strokes
        }
    }

    onUiLoaded(() => gradioApp().addEventListener("click", clearPictureWithStrokes, true));

    // -- the status line and reference list after a Save ----------------------------------------------------
    // A Save is written in the background after the generation has returned, and the host tells scripts nothing
    // when that ends. So when the log under a tab's images says RefDrop is saving, this clicks that panel's hidden
    // poll button (lib_refdrop/webui/panel.py answers with the status line and the reference list) until the status line
    // no longer says so. Nothing is sent at any other time. The button's label counts the answers, which tells a
    // slow answer from an answer that changed nothing.
    const SAVING = "RefDrop: saving reference";  // lib_refdrop/run.py SAVING
    const TABS = ["txt2img", "img2img"];
    const POLL_MS = 1000;
    const SLOW_POLL_MS = 5000;  // after FAST_POLLS answers: a very large Save on a slow disk
    const FAST_POLLS = 60;
    const ANSWER_TIMEOUT_MS = 60 * 1000;
    const GIVE_UP_MS = 30 * 60 * 1000;  // the status line then stays as it is; 🔄 still updates it
    const seenLog = {};
    const polling = new Set();

    // While an answer is pending gradio dims a Markdown to 20 % and stretches it to its loading height: once a
    // second during a Save, the status line would blink and push the panel below it up and down.
    const STEADY_STATUS_CSS =
        '[id^="script_"][id$="_refdrop_status"] .min, [id^="script_"][id$="_refdrop_status"].min ' +
        "{ min-height: 0 !important; } " +
        '[id^="script_"][id$="_refdrop_status"] .pending { opacity: 1 !important; }';

    function addSteadyStatusStyle() {
        const style = document.createElement("style");
        style.textContent = STEADY_STATUS_CSS;
        document.head.appendChild(style);
    }

    function panelElement(tab, item) {
        return gradioApp().getElementById(`script_${tab}_refdrop_${item}`);
    }

    function pollUntilSaved(tab) {
        if (polling.has(tab)) {
            return;
        }
        polling.add(tab);
        const started = Date.now();
        let polls = 0;
        let sentLabel = null;
        let sentAt = 0;
        const step = () => {
            const button = panelElement(tab, "poll");
            const status = panelElement(tab, "status");
            const now = Date.now();
            if (!button || !status || now - started > GIVE_UP_MS) {
                return stopPolling(tab);
            }
            if (sentLabel !== null && button.textContent.trim() === sentLabel) {  // no answer yet
                return now - sentAt > ANSWER_TIMEOUT_MS ? stopPolling(tab) : setTimeout(step, 200);
            }
            if (sentLabel !== null && !status.textContent.includes(SAVING)) {
                return stopPolling(tab);
            }
            sentLabel = button.textContent.trim();
            sentAt = now;
            button.click();
            polls += 1;
            setTimeout(step, polls < FAST_POLLS ? POLL_MS : SLOW_POLL_MS);
        };
        step();
    }

    function stopPolling(tab) {
        polling.delete(tab);
        for (const other of TABS) {  // the other tab's panel lists the new reference too
            const button = other !== tab && !polling.has(other) && panelElement(other, "poll");
            if (button) {
                button.click();
            }
        }
    }

    function watchGenerationLogs() {
        for (const tab of TABS) {
            const log = gradioApp().getElementById(`html_log_${tab}`);
            const text = log ? log.textContent : "";
            if (text !== seenLog[tab]) {
                seenLog[tab] = text;
                if (text.includes(SAVING)) {
                    pollUntilSaved(tab);
                }
            }
        }
    }

    onUiLoaded(addSteadyStatusStyle);
    onUiUpdate(watchGenerationLogs);
})();
