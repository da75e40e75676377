"use strict";
// The schedule change form: show the next planned times of the timing being
// typed, from the admin's preview view. Renders text only (textContent).
(function () {
    const FIELDS = ["cron", "interval", "timezone", "start_at_0", "start_at_1", "end_at_0", "end_at_1"];

    function render(list, data) {
        list.replaceChildren();
        const lines = data.errors || (data.times || []).map(
            (pair) => pair[0] + " (" + pair[1] + ")"
        );
        if (data.description) {
            lines.unshift(data.description + ":");
        }
        for (const line of lines) {
            const item = document.createElement("li");
            item.textContent = line;
            if (data.errors) {
                item.className = "errornote";
            }
            list.appendChild(item);
        }
    }

    function update(list) {
        const params = new URLSearchParams();
        for (const name of FIELDS) {
            const input = document.getElementById("id_" + name);
            if (input && input.value) {
                params.set(name, input.value);
            }
        }
        fetch(list.dataset.previewUrl + "?" + params.toString(), {credentials: "same-origin"})
            .then((response) => response.json())
            .then((data) => render(list, data))
            .catch(() => {});
    }

    document.addEventListener("DOMContentLoaded", function () {
        const list = document.getElementById("bgtasks-upcoming");
        if (!list) {
            return;
        }
        let timer = null;
        const later = function () {
            clearTimeout(timer);
            timer = setTimeout(() => update(list), 300);
        };
        for (const name of FIELDS) {
            const input = document.getElementById("id_" + name);
            if (input) {
                input.addEventListener("input", later);
                input.addEventListener("change", later);
            }
        }
    });
})();
