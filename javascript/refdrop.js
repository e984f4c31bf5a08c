// RefDrop panel tooltips. Keys are the item ids of lib_refdrop/ui.py (ITEM_IDS); elements are found by the
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
})();
