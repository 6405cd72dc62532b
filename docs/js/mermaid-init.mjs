// Render ```mermaid blocks in the browser. Python-Markdown turns them into
// <pre><code class="language-mermaid">; this swaps each for a <div class="mermaid"> and asks
// mermaid (from a CDN) to draw it. Offline, the diagrams stay readable as text.
const blocks = document.querySelectorAll("pre > code.language-mermaid");
if (blocks.length > 0) {
  const { default: mermaid } = await import(
    "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs"
  );
  for (const code of blocks) {
    const diagram = document.createElement("div");
    diagram.className = "mermaid";
    diagram.textContent = code.textContent;
    code.parentElement.replaceWith(diagram);
  }
  mermaid.initialize({ startOnLoad: false });
  await mermaid.run({ querySelector: "div.mermaid" });
}
