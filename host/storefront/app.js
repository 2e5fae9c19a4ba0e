// MetalMart storefront: hash-routed single page over the host's own API. Product grid, detail,
// cart (localStorage), checkout, confirmation, and live order tracking over Server-Sent Events.
// DOM is built with textContent only, so nothing from the API is ever parsed as HTML.
"use strict";

const STEPS = ["pending", "processing", "confirmed", "shipped"];
const view = document.getElementById("view");
let stream = null; // the tracking page's EventSource, closed on navigation
let poll = null; // and its notification refresh timer

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const money = (n) => `$${Number(n).toFixed(2)}`;

async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
  return body;
}

const cart = {
  load: () => JSON.parse(localStorage.getItem("cart") || "{}"),
  save(items) {
    localStorage.setItem("cart", JSON.stringify(items));
    document.getElementById("cart-count").textContent = Object.values(items).reduce((a, b) => a + b, 0);
  },
  add(id, qty) {
    const items = cart.load();
    items[id] = Math.min(100, (items[id] || 0) + qty);
    cart.save(items);
  },
  set(id, qty) {
    const items = cart.load();
    if (qty > 0) items[id] = Math.min(100, qty); else delete items[id];
    cart.save(items);
  },
  clear: () => cart.save({}),
};

function show(...nodes) {
  view.replaceChildren(...nodes);
}

async function shop() {
  const products = await api("/api/products");
  show(
    h("h1", {}, "Shop"),
    h("div", { class: "grid" }, products.map((p) =>
      h("div", { class: "card", "data-product": p.id },
        h("a", { href: `#/product/${p.id}` }, h("img", { src: p.image_url, alt: p.name }), h("h3", {}, p.name)),
        h("span", { class: "price" }, money(p.price)),
        h("button", { class: "add", onclick: () => { cart.add(p.id, 1); } }, "Add to cart")))),
  );
}

async function product(id) {
  const [p, stock] = await Promise.all([api(`/api/products/${encodeURIComponent(id)}`), api(`/api/inventory/${encodeURIComponent(id)}`)]);
  show(h("div", { class: "detail" },
    h("img", { src: p.image_url, alt: p.name }),
    h("div", {},
      h("h1", {}, p.name), h("p", {}, p.description), h("p", { class: "price" }, money(p.price)),
      h("p", { class: "muted" }, `${stock.available_quantity} in stock · ${p.category}`),
      h("button", { class: "add", onclick: () => { cart.add(p.id, 1); location.hash = "#/cart"; } }, "Add to cart"))));
}

async function cartView() {
  const items = cart.load();
  const ids = Object.keys(items);
  if (ids.length === 0) return show(h("h1", {}, "Cart"), h("p", {}, "Your cart is empty. "), h("a", { href: "#/" }, "Go shopping"));
  const products = await Promise.all(ids.map((id) => api(`/api/products/${encodeURIComponent(id)}`)));
  const total = products.reduce((sum, p) => sum + p.price * items[p.id], 0);
  show(
    h("h1", {}, "Cart"),
    h("table", {},
      h("tr", {}, h("th", {}, "Product"), h("th", {}, "Quantity"), h("th", {}, "Price")),
      products.map((p) => h("tr", {},
        h("td", {}, p.name),
        h("td", {}, h("input", { type: "number", min: "0", max: "100", value: items[p.id], "aria-label": `quantity of ${p.name}`,
          onchange: (e) => { cart.set(p.id, Number(e.target.value)); cartView(); } })),
        h("td", {}, money(p.price * items[p.id])))),
      h("tr", {}, h("th", {}, "Total"), h("td", {}), h("th", { id: "cart-total" }, money(total)))),
    h("p", {}, h("a", { class: "button", id: "to-checkout", href: "#/checkout" }, "Checkout")),
  );
}

function checkout() {
  const items = cart.load();
  if (Object.keys(items).length === 0) return cartView();
  // The API's limits (docs/contracts.md): 200 characters a text field, 254 for an email address.
  const field = (name, label, type = "text") =>
    h("label", {}, label, h("input", { name, type, required: "", maxlength: type === "email" ? "254" : "200" }));
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { id: "checkout" },
    field("customer_name", "Name"), field("customer_email", "Email", "email"),
    field("street", "Street"), field("city", "City"), field("zip_code", "ZIP code"), field("country", "Country"),
    error, h("button", { type: "submit" }, "Place order"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = {
      customer_name: f.get("customer_name"),
      customer_email: f.get("customer_email"),
      shipping_address: { street: f.get("street"), city: f.get("city"), state: "", zip_code: f.get("zip_code"), country: f.get("country") },
      items: Object.entries(items).map(([product_id, quantity]) => ({ product_id, quantity })),
    };
    form.querySelector("button").disabled = true;
    try {
      const done = await api("/api/checkout", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      cart.clear();
      sessionStorage.setItem(`order:${done.order_id}`, JSON.stringify({ number: done.order_number, token: done.tracking_token, total: done.total_amount }));
      location.hash = `#/confirmation/${done.order_id}`;
    } catch (err) {
      error.textContent = err.message;
      form.querySelector("button").disabled = false;
    }
  });
  show(h("h1", {}, "Checkout"), form);
}

function confirmation(id) {
  const o = JSON.parse(sessionStorage.getItem(`order:${id}`) || "null");
  if (!o) return show(h("p", {}, "Unknown order. "), h("a", { href: "#/" }, "Back to the shop"));
  show(h("div", { class: "panel" },
    h("h1", {}, "Thank you!"),
    h("p", {}, "Order number ", h("strong", { id: "order-number" }, o.number), ` · ${money(o.total)}`),
    h("p", {}, h("a", { class: "button", id: "track-link", href: `#/track/${o.token}` }, "Track your order"))));
}

async function track(token) {
  const order = await api(`/api/orders/track/${encodeURIComponent(token)}`);
  const steps = STEPS.map((s) => h("div", { class: "step", "data-step": s }, s));
  const bar = h("div", { class: "bar", id: "status-bar" }, steps);
  const badge = h("span", { class: "badge", id: "mirrord-badge", hidden: "" }, "processed via mirrord session");
  const notes = h("ul", { class: "notes", id: "notifications" });
  const status = h("strong", { id: "status" });
  show(h("div", { class: "panel" },
    h("h1", {}, `Order ${order.order_number}`),
    h("p", {}, "Status: ", status, " ", badge),
    bar,
    h("p", { class: "muted" }, `${order.customer_name} · ${money(order.total_amount)} · ${order.items.length} item(s)`)),
    h("div", { class: "panel" }, h("h2", {}, "Notifications"), notes));

  let source = order.source;
  const render = (current) => {
    const at = STEPS.indexOf(current);
    steps.forEach((el, i) => { el.className = "step" + (i < at || current === "shipped" ? " done" : i === at ? " current" : ""); });
    bar.dataset.status = current;
    status.textContent = current;
    badge.hidden = source !== "mirrord";
  };
  const refresh = async () => {
    const [o, list] = await Promise.all([api(`/api/orders/${order.id}`), api(`/api/orders/${order.id}/notifications`)]);
    source = o.source;
    render(o.status);
    notes.replaceChildren(...list.map((n) => h("li", {}, h("strong", {}, `[${n.channel}] ${n.subject}`), ` ${n.body}`)));
  };
  render(order.status);
  await refresh();
  stream = new EventSource(`/api/orders/${order.id}/events`);
  stream.addEventListener("status", (e) => {
    render(JSON.parse(e.data).status);
    refresh().catch(() => {});
  });
  // Notifications are written by a handler after the status change it answers, so they can
  // trail the last status event: keep looking for a while.
  poll = setInterval(() => refresh().catch(() => {}), 1500);
}

async function route() {
  if (stream) { stream.close(); stream = null; }
  if (poll) { clearInterval(poll); poll = null; }
  const [, page, arg] = location.hash.split("/");
  try {
    if (page === "product") await product(arg);
    else if (page === "cart") await cartView();
    else if (page === "checkout") checkout();
    else if (page === "confirmation") confirmation(arg);
    else if (page === "track") await track(arg);
    else await shop();
  } catch (err) {
    show(h("p", { class: "error", role: "alert" }, `Something went wrong: ${err.message}`), h("a", { href: "#/" }, "Back to the shop"));
  }
}

window.addEventListener("hashchange", route);
cart.save(cart.load());
route();
