"use strict";
// The dashboard refreshes its figures in place (live.js): every
// data-refresh seconds it fetches them (the same template, rendered by the
// server) and swaps them in. The live URL names the page's database; the
// page's other parameters (?refresh=) go along.
document.addEventListener("DOMContentLoaded", function () {
    const main = document.getElementById("content-main");
    if (!main || !main.dataset.liveUrl) {
        return;
    }
    const url = new URL(main.dataset.liveUrl, window.location.href);
    new URLSearchParams(window.location.search).forEach(function (value, name) {
        if (!url.searchParams.has(name)) {
            url.searchParams.append(name, value);
        }
    });
    window.bgtasksLive.poll(main, url.href, Number(main.dataset.refresh) || 5, function (response) {
        return response.text().then(function (html) {
            window.bgtasksLive.swap(main, html);
            main.dataset.refreshes = String(Number(main.dataset.refreshes || 0) + 1);
        });
    });
});
