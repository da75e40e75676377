"use strict";
// A running job's page follows its progress: every 2 seconds, while the tab
// is shown, it reads the job's status and progress field (HTML the server
// renders, its text escaped) and swaps the field in; once the job has ended,
// the page loads again to show how.
(function () {
    function follow(page) {
        if (document.visibilityState !== "visible" || page.dataset.loading) {
            return;
        }
        page.dataset.loading = "1";
        fetch(page.dataset.progressUrl, {credentials: "same-origin", cache: "no-store"})
            .then(function (response) {
                if (response.redirected) {
                    // Sent to the login page (the session ended): show it.
                    window.location.reload();
                    throw new Error("signed out");
                }
                if (!response.ok) {
                    throw new Error("HTTP " + response.status);
                }
                return response.json();
            })
            .then(function (data) {
                if (data.status !== "RUNNING") {
                    window.location.reload();
                    return;
                }
                const field = page.querySelector(".field-progress_bar .readonly");
                if (field) {
                    const parsed = new DOMParser().parseFromString(data.progress_html, "text/html");
                    field.replaceChildren(...Array.from(parsed.body.childNodes));
                }
                page.dataset.updates = String(Number(page.dataset.updates || 0) + 1);
            })
            .catch(function () {})
            .finally(function () {
                delete page.dataset.loading;
            });
    }

    document.addEventListener("DOMContentLoaded", function () {
        const page = document.getElementById("bgtasks-job");
        if (!page || !page.dataset.progressUrl) {
            return;
        }
        window.setInterval(function () { follow(page); }, 2000);
        document.addEventListener("visibilitychange", function () { follow(page); });
    });
})();
