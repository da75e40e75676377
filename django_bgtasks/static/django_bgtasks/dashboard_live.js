"use strict";
// The dashboard refreshes its figures in place (live.js): every
// data-refresh seconds it fetches them (the same template, rendered by the
// server) and swaps them in.
document.addEventListener("DOMContentLoaded", function () {
    const main = document.getElementById("content-main");
    if (!main || !main.dataset.liveUrl) {
        return;
    }
    const url = main.dataset.liveUrl + window.location.search;
    window.bgtasksLive.poll(main, url, Number(main.dataset.refresh) || 5, function (response) {
        return response.text().then(function (html) {
            window.bgtasksLive.swap(main, html);
            main.dataset.refreshes = String(Number(main.dataset.refreshes || 0) + 1);
        });
    });
});
