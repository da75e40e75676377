"use strict";
// What the admin's live pages share (dashboard_live.js, job_live.js): ask
// the server again every few seconds while the tab is shown, and at once
// when it is shown again; never two requests at a time; back to the login
// page if the session has ended. The element's data-loading is set while a
// request is out, data-stale while the last one failed.
window.bgtasksLive = {
    // Every ``seconds``, fetch ``url`` and hand the response to ``apply``.
    poll: function (element, url, seconds, apply) {
        function ask() {
            if (document.visibilityState !== "visible" || element.dataset.loading) {
                return;
            }
            element.dataset.loading = "1";
            fetch(url, {credentials: "same-origin", cache: "no-store"})
                .then(function (response) {
                    if (response.redirected) {
                        // Sent to the login page (the session ended): show it.
                        window.location.reload();
                        throw new Error("signed out");
                    }
                    if (!response.ok) {
                        throw new Error("HTTP " + response.status);
                    }
                    return apply(response);
                })
                .then(function () {
                    delete element.dataset.stale;
                })
                .catch(function () {
                    // Kept as it was; tried again at the next turn.
                    element.dataset.stale = "1";
                })
                .finally(function () {
                    delete element.dataset.loading;
                });
        }
        window.setInterval(ask, seconds * 1000);
        document.addEventListener("visibilitychange", ask);
    },

    // Put the HTML ``html`` (rendered by the server: its text escaped) in
    // place of what ``element`` holds.
    swap: function (element, html) {
        const parsed = new DOMParser().parseFromString(html, "text/html");
        element.replaceChildren(...Array.from(parsed.body.childNodes));
    },
};
