/* OHIF configuration for `make viewer`: Orthanc's DICOMweb behind the same origin (viewer/proxy.py). */
(function hideFirstVisitTour() {
  const shown = JSON.parse(window.localStorage.getItem('shownTours') || '[]');
  if (!shown.includes('basicViewerTour')) {
    window.localStorage.setItem('shownTours', JSON.stringify([...shown, 'basicViewerTour']));
  }
})();

const dicomWeb = window.location.origin + '/dicom-web';

window.config = {
  name: 'avn-node viewer',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (avn-node results)',
        name: 'orthanc',
        wadoUriRoot: dicomWeb,
        qidoRoot: dicomWeb,
        wadoRoot: dicomWeb,
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
