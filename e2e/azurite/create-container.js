// Creates a blob container in Azurite (object_store, like Ordinal, never
// creates one: containers belong to whoever runs the store).
// Usage: node create-container.js ENDPOINT ACCOUNT KEY CONTAINER
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");

const [endpoint, account, key, container] = process.argv.slice(2);
const client = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(account, key));
client
  .getContainerClient(container)
  .createIfNotExists()
  .then(() => process.exit(0))
  .catch((error) => {
    console.error(`cannot create container ${container} at ${endpoint}: ${error.message}`);
    process.exit(1);
  });
