// RefDrop panel tooltips. Keys are the item ids of lib_refdrop/webui/panel.py (ITEM_IDS); elements are found by the
// elem_id the script gives them: script_txt2img_refdrop_<item> / script_img2img_refdrop_<item>.
(function () {
    const REFDROP_TOOLTIPS = {
        enabled: "RefDrop: Save records the self-attention of a generation as a named reference; Use blends it into new generations.",
        mode: "Save: record this generation as a reference. Use: steer this generation with a saved reference.",
        rfg: "RFG coefficient c: out = c·Attn(Q, K_ref, V_ref) + (1−c)·Attn(Q, K, V). Positive pulls toward the reference " +
            "(0.2–0.6 typical; 0.3–0.4 for a consistent subject, 0.2 for simple ones), negative pushes away for more " +
            "diversity (−0.2 to −0.3). 0 = exactly a normal generation.",
        reference: "The saved reference to blend in. It must come from a model of the same family (SD1.5, SDXL).",
        refresh: "Reload the list of saved references and the status of the last Save.",
        preview: "The image the reference was saved from.",
        info: "Model family, size, steps, sampler, seed, prompt, disk size and date of the selected reference.",
        delete: "Delete the selected reference from disk (asks for confirmation).",
        delete_confirm: "Delete the selected reference for good.",
        delete_cancel: "Keep the reference.",
        rename_to: "New name for the selected reference: letters, digits, spaces and _ - . ( ) +.",
        rename: "Rename the selected reference.",
        save_name: "Name of the new reference. Empty: ref-<seed>-<time>.",
        status: "Result of the last Save, delete or rename.",
        advanced: "Where and when RefDrop acts, and how references are stored.",
        disabled_groups: "Whole U-Net parts that keep their own attention (input = down-sampling, middle, output = up-sampling).",
        disabled_blocks: "Single U-Net blocks that keep their own attention. SD1.5: IN01 IN02 IN04 IN05 IN07 IN08 M00 " +
            "OUT03–OUT11; SDXL: IN04 IN05 IN07 IN08 M00 OUT00–OUT05.",
        skip_first_up: "Leave the first up-sampling block with attention alone (the paper's ablation): the result copies " +
            "less of the reference's pose and background while keeping its subject.",
        step_start: "Fraction of the sampling schedule where RefDrop starts (0 = from the first step).",
        step_end: "Fraction of the sampling schedule where RefDrop stops (1 = until the last step). Ending early keeps " +
            "the reference's layout influence and frees the details.",
        apply_hires: "Also blend the reference during the hires fix pass (the reference is looked up by noise level).",
        overwrite: "Replace a reference that already has this name.",
        profile: "How a Save stores the features: exact = as computed (Use at the same settings reproduces the image); " +
            "compact profiles trade some fidelity for disk space. Empty = the default from Settings → RefDrop.",
        source: "Where the reference comes from. Saved reference: one from the library. First image of the batch: " +
            "image 0 is generated plainly and every other image of this generation attends to it (nothing is saved). " +
            "Image: the picture below, evaluated alongside every step (nothing is saved).",
        save_from: "This generation: record the image being generated. An image: record the picture below, evaluated " +
            "with the loaded model, as a reference that later Uses read like any other.",
        image: "The picture of a Save from an image, or of the Image source. PNG, JPEG or WebP, up to 4096×4096.",
        image_prompt: "The prompt every picture of a Save from an image or of an Image source is evaluated with " +
            "(empty: no prompt), as the prompt of a generation would be.",
        mask_box: "Which part of the reference the generation attends to.",
        mask: "White = the subject (attended), black = not attended. Paint over the reference's picture, or upload a " +
            "black-and-white mask. Empty: the whole reference.",
        mask_paint: "Put the reference's picture (its preview, or the image) in the mask to paint the subject on it.",
        mask_keep: "Keep this mask with the selected saved reference: every Use of it without a mask of its own " +
            "uses it.",
        mask_forget: "Remove the mask kept with the selected saved reference.",
        more: "Up to two more references, each with its own coefficient: " +
            "Σ c_j·Attn(Q, K_j, V_j) + (1 − Σ c_j)·Attn(Q, K, V).",
        source_2: "Where reference 2 comes from (see Source above).",
        rfg_2: "RFG coefficient of reference 2; 0 = reference 2 is off.",
        reference_2: "The saved reference used as reference 2.",
        refresh_2: "Reload the list of saved references.",
        image_2: "The picture of reference 2 when its source is Image. PNG, JPEG or WebP, up to 4096×4096.",
        mask_box_2: "Which part of reference 2 the generation attends to.",
        mask_2: "Subject mask of reference 2: white = attended, black = not. Empty: the whole reference.",
        mask_paint_2: "Put reference 2's picture (its preview, or its image) in its mask to paint the subject on it.",
        source_3: "Where reference 3 comes from (see Source above).",
        rfg_3: "RFG coefficient of reference 3; 0 = reference 3 is off.",
        reference_3: "The saved reference used as reference 3.",
        refresh_3: "Reload the list of saved references.",
        image_3: "The picture of reference 3 when its source is Image. PNG, JPEG or WebP, up to 4096×4096.",
        mask_box_3: "Which part of reference 3 the generation attends to.",
        mask_3: "Subject mask of reference 3: white = attended, black = not. Empty: the whole reference.",
        mask_paint_3: "Put reference 3's picture (its preview, or its image) in its mask to paint the subject on it.",
    };

    function applyRefDropTooltips() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [item, text] of Object.entries(REFDROP_TOOLTIPS)) {
                const element = gradioApp().getElementById(`script_${tab}_refdrop_${item}`);
                if (element && !element.title) {
                    element.title = text;
                }
            }
        }
    }

    onUiLoaded(applyRefDropTooltips);

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
