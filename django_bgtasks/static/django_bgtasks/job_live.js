"use strict";
// A running job's page follows its progress (live.js): every 2 seconds it
// reads the job's status and progress field and swaps the field in; once
// the job has ended, the page loads again to show how.
document.addEventListener("DOMContentLoaded", function () {
    const page = document.getElementById("bgtasks-job");
    if (!page || !page.dataset.progressUrl) {
        return;
    }
    window.bgtasksLive.poll(page, page.dataset.progressUrl, 2, function (response) {
        return response.json().then(function (data) {
            if (data.status !== "RUNNING") {
                window.location.reload();
                return;
            }
            const field = page.querySelector(".field-progress_bar .readonly");
            if (field) {
                window.bgtasksLive.swap(field, data.progress_html);
            }
            page.dataset.updates = String(Number(page.dataset.updates || 0) + 1);
        });
    });
});
