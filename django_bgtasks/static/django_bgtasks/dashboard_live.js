"use strict";
// The dashboard refreshes its figures in place: every data-refresh seconds
// it fetches them (the same template, rendered by the server: only escaped
// text in it) and swaps them in. Not while the tab is hidden: then it asks
// no more, and refreshes at once when the tab is shown again.
(function () {
    function refresh(main) {
        if (document.visibilityState !== "visible" || main.dataset.loading) {
            return;
        }
        main.dataset.loading = "1";
        fetch(main.dataset.liveUrl + window.location.search, {
            credentials: "same-origin",
            cache: "no-store",
        })
            .then(function (response) {
                if (response.redirected) {
                    // Sent to the login page (the session ended): show it.
                    window.location.reload();
                    throw new Error("signed out");
                }
                if (!response.ok) {
                    throw new Error("HTTP " + response.status);
                }
                return response.text();
            })
            .then(function (html) {
                const page = new DOMParser().parseFromString(html, "text/html");
                main.replaceChildren(...Array.from(page.body.childNodes));
                main.dataset.refreshes = String(Number(main.dataset.refreshes || 0) + 1);
                delete main.dataset.stale;
            })
            .catch(function () {
                // Kept as it was (the server or the network is away): said
                // on the page, tried again at the next turn.
                main.dataset.stale = "1";
            })
            .finally(function () {
                delete main.dataset.loading;
            });
    }

    document.addEventListener("DOMContentLoaded", function () {
        const main = document.getElementById("content-main");
        if (!main || !main.dataset.liveUrl) {
            return;
        }
        const seconds = Number(main.dataset.refresh) || 5;
        window.setInterval(function () { refresh(main); }, seconds * 1000);
        document.addEventListener("visibilitychange", function () {
            refresh(main);
        });
    });
})();
